"""The abstract machine: KVM_SET_USER_MEMORY_REGION's rules (v5.12 virt/kvm/kvm_main.c
__kvm_set_memory_region) and the host page table."""
import pytest
from util import HVA, P

from impls.machine import (LEVEL_2M, LEVEL_4K, HostPageTable, KVM_MEM_LOG_DIRTY_PAGES,
                           KVM_MEM_READONLY, MemslotUpdateError, Memslots)


def slots(n_as=2):
    return Memslots(address_space_num=n_as, user_mem_slots=509, readonly_mem=True)


def test_create_move_flags_delete():
    m = slots()
    assert m.set_user_memory_region(0, 0, 0, 0x100 * P, 4 * P, HVA).kind == "create"
    assert m.set_user_memory_region(0, 0, 0, 0x100 * P, 4 * P, HVA).kind == "none"
    assert m.set_user_memory_region(0, 0, 0, 0x300 * P, 4 * P, HVA).kind == "move"
    assert m.set_user_memory_region(0, 0, KVM_MEM_LOG_DIRTY_PAGES, 0x300 * P, 4 * P, HVA).kind == "flags_only"
    assert m.set_user_memory_region(0, 0, 0, 0, 0, HVA).kind == "delete"
    assert m.all() == []


@pytest.mark.parametrize("args, errno, why", [
    ((0, 1, 0, 0x102 * P, 4 * P, HVA + 64 * P), "EEXIST", "overlaps"),        # gfn overlap, same AS
    ((0, 1, 0, 0x100 * P, 4 * P + 1, HVA), "EINVAL", "memory_size"),
    ((0, 1, 0, 0x100 * P + 8, 4 * P, HVA), "EINVAL", "guest_phys_addr"),
    ((0, 1, 0, 0x200 * P, 4 * P, HVA + 8), "EINVAL", "userspace_addr"),
    ((2, 1, 0, 0x200 * P, 4 * P, HVA), "EINVAL", "as_id"),
    ((0, 509, 0, 0x200 * P, 4 * P, HVA), "EINVAL", "KVM_USER_MEM_SLOTS"),
    ((0, 1, 4, 0x200 * P, 4 * P, HVA), "EINVAL", "flags"),
    ((0, 7, 0, 0, 0, HVA), "EINVAL", "does not exist"),                    # delete of nothing
    ((0, 0, 0, 0x100 * P, 8 * P, HVA), "EINVAL", "size"),                    # resize
    ((0, 0, 0, 0x100 * P, 4 * P, HVA + P), "EINVAL", "userspace_addr"),     # new hva
    ((0, 0, KVM_MEM_READONLY, 0x100 * P, 4 * P, HVA), "EINVAL", "READONLY"),
])
def test_refused_updates_get_kvms_errno(args, errno, why):
    m = slots()
    m.set_user_memory_region(0, 0, 0, 0x100 * P, 4 * P, HVA)
    with pytest.raises(MemslotUpdateError) as e:
        m.set_user_memory_region(*args)
    assert e.value.errno_name == errno and why in e.value.why
    assert [s.id for s in m.all()] == [0]          # nothing changed


def test_hva_aliasing_allowed_and_gfn_overlap_only_checked_per_address_space():
    m = slots()
    m.set_user_memory_region(0, 0, 0, 0x100 * P, 4 * P, HVA)
    m.set_user_memory_region(0, 1, 0, 0x200 * P, 4 * P, HVA)      # same hva, other gfns
    m.set_user_memory_region(1, 0, 0, 0x100 * P, 4 * P, HVA)      # same gfns, SMM address space
    assert len(m.all()) == 3


def test_slot_array_is_sorted_by_base_gfn_descending():
    m = slots()
    for sid, gfn in ((0, 0x100), (1, 0x300), (2, 0x200)):
        m.set_user_memory_region(0, sid, 0, gfn * P, P, HVA + sid * P)
    assert [s.base_gfn for s in m.in_as(0)] == [0x300, 0x200, 0x100]


def test_changing_part_of_a_huge_host_mapping_splits_it():
    h = HostPageTable()
    h.map(HVA, 2 << 20, 0x40000, 2 << 20, True)
    assert h.lookup(HVA + 5 * P).level == LEVEL_2M
    h.set_pte(HVA + 7 * P, 0x9000, False)
    assert h.lookup(HVA + 7 * P).pfn == 0x9000
    assert h.lookup(HVA + 5 * P).level == LEVEL_4K and h.lookup(HVA + 5 * P).pfn == 0x40005
    with pytest.raises(ValueError):
        h.map(HVA + P, 2 << 20, 0x40000, 2 << 20, True)          # huge but unaligned
