"""The v6.19 legacy MMU as it runs on Hyper-V: kvm_x86_ops.flush_remote_tlbs_range is set, so
a ranged flush flushes only its range (elsewhere it is a full flush).  Nothing else differs
from the shipped model."""
from impls import registry


class HyperV(registry.resolve("x86-shadow", "v6.19")):
    hyperv_range_flush = True
