#!/bin/bash -eu
# Build memslot-fuzz's atheris target the way ClusterFuzzLite/OSS-Fuzz build Python fuzzers:
# one PyInstaller package per architecture via compile_python_fuzzer, with a seed corpus zip
# and an .options file next to each.  Runs in base-builder-python ($SRC, $OUT set); see
# docs/DISTRIBUTED.md for running these steps without Docker.
cd "$SRC/memslot-fuzz"

# the trace language, models, oracles and fuzz/ packages and their dependencies (hypothesis, greenlet);
# atheris comes with the base image
pip3 install .

ARCHES="${MEMSLOT_FUZZ_ARCHES:-x86-shadow x86-tdp arm64 mips ppc-hv-hash ppc-hv-radix ppc-pr e500}"
for arch in $ARCHES; do
  # the fuzzer's name is its file name; the target reads its arch from it (memslot_<arch>)
  name="memslot_${arch//-/_}"
  cp fuzz/engines/atheris_target.py "$SRC/$name.py"
  # registry.py imports the arch modules by name and triage reads oracles/known/*.toml:
  # PyInstaller sees neither, so name them
  compile_python_fuzzer "$SRC/$name.py" \
    --collect-submodules language --collect-submodules impls --collect-submodules oracles --collect-submodules fuzz \
    --collect-data oracles
  # seeds: the KVM-selftest scenarios and this arch's minimized regression traces (JSON
  # traces, which the target decodes as themselves)
  rm -f "$OUT/${name}_seed_corpus.zip"
  zip -q -j "$OUT/${name}_seed_corpus.zip" corpus/seeds/*.json $(ls corpus/"$arch"/*.json 2>/dev/null || true)
  # a trace of 40 events is about 5 KB of JSON: let libFuzzer's inputs be that big
  printf '[libfuzzer]\nmax_len = 65536\n' > "$OUT/$name.options"
done
