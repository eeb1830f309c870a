#!/usr/bin/env bash
# Every method of raising PGR on the offline zoo, SST-2 and SciQ, one seed, then the report.
# The stage cache shares the weak models and the plain ceilings between methods.
#   bash scripts/compare_methods.sh [extra overrides, e.g. seed=0,1,2]
# Writes outputs/compare/<time>/<method>/<job>/results.json and outputs/compare/<time>/report/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ROOT=${W2S_LOG_DIR:-outputs}/compare/$(date +%Y-%m-%d_%H-%M-%S)
sweep() { local name=$1; shift; "$PY" run.py -m "hydra.sweep.dir=$ROOT/$name" "$@"; }

sweep losses     experiment=methods_sst2,methods_sciq loss=xent,aux_conf,aux_conf_soft,adapt_conf,window "$@"
sweep zoo        experiment=methods_sst2,methods_sciq \
                 method=s2s,knn_relabel,logreg_relabel,knn_filter,logreg_filter,topo_filter,confidence_filter,weak_ensemble "$@"
sweep bootstrap_sst2 experiment=methods_sst2 method=bootstrap method/rungs=minilm_l6 loss=xent,aux_conf "$@"
sweep bootstrap_sciq experiment=methods_sciq method=bootstrap method/rungs=mpnet_base loss=xent,aux_conf "$@"
sweep generative experiment=methods_sst2,methods_sciq method=generative loss=xent,aux_conf "$@"
sweep select     experiment=methods_sst2,methods_sciq select=weak_val,oracle_val "$@"
sweep finetune   experiment=methods_sst2,methods_sciq finetune=probe,lora "$@"
"$PY" -m w2s_lightning.report "$ROOT"
