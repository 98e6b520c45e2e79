"""The regression corpus: minimized traces with what each must show (`memslot-fuzz replay`),
one directory per architecture, and seeds/ from the KVM selftests' scenarios.  A package only
so that it is installed beside the code (the atheris engine warm-starts from it, wherever the
tool runs from); fuzz/corpus.py reads and writes its entries."""
