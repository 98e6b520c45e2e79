"""v6.19 legacy MMU with Hyper-V's ranged flush, where need_resched() turns true only after a 2M head."""
from impls import registry

Base = registry.resolve("x86-shadow", "v6.19")


class HyperVYieldAt2M(Base):
    hyperv_range_flush = True

    def kvm_unmap_rmapp(self, head, slot, gfn, level, pte):
        self.last_level = level
        return super().kvm_unmap_rmapp(head, slot, gfn, level, pte)

    def rmap_yield(self, slot, start_gfn, gfn, flush):
        if getattr(self, "last_level", 1) == 2:
            return super().rmap_yield(slot, start_gfn, gfn, flush)
        return flush
