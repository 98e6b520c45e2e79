"""bisect, list --commits and run --matrix: the modelled history by commit (issue 11)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fuzz import history
from fuzz.cli import main
from language.trace import ClearYoung, FaultBegin, FaultCommit, HostMap, SetMemoryRegion, dumps
from impls import registry

REPO = Path(__file__).resolve().parent.parent
P = 4096
H = 0x7f0000000000
# the Book3S HV rc1 regression: invalidate_range_start handed only range->start on the hash MMU
PPC_RC1 = REPO / "corpus" / "ppc-hv-hash" / "037df0f0d4fcca5a.json"


def test_history_is_in_kernel_order_with_the_named_commits_between_versions():
    names = [p.name for p in history.history("ppc-hv-hash")]
    assert names[:4] == ["v5.12", "v5.13-rc1", "v5.13-rc1+32b48bf8514c", "v5.13"]
    assert "series-v1" not in names                     # a posting, not a point of mainline
    keys = [registry.release_key(n.split("+")[0]) for n in names]
    assert keys == sorted(keys)
    arm = {p.name: p for p in history.history("arm64")}
    assert arm["v5.17+df6556adf27b"].commits == (
        ("df6556adf27b", "KVM: arm64: Correctly handle page aging notifiers for unaligned memslot"),)
    assert issubclass(arm["v5.17+df6556adf27b"].cls, arm["v5.17"].cls)
    assert history.point("arm64", "df6556a").name == "v5.17+df6556adf27b"      # a commit names its point
    assert history.point("x86-shadow", "mainline").name == "v6.19"


def test_the_book3s_hv_rc1_regression_starts_at_b1c5356e873c_and_ends_at_da3bb206c9ce_on_hash(capsys):
    rc = main(["bisect", str(PPC_RC1), "--finding", "gfn-set-mismatch/invalidate_range_start/only-first-gfn"])
    out = capsys.readouterr().out
    assert rc == 0
    assert 'first bad: b1c5356e873c "KVM: PPC: Convert to the gfn-based MMU notifier callbacks" (v5.13-rc1)' in out
    assert ('gone at: da3bb206c9ce "KVM: PPC: Book3S HV: Fix kvm_unmap_gfn_range_hv() for Hash MMU" (v5.13)'
            in out)
    # 32b48bf8514c alone fixed the loop but still passed range->start to every hash unmap
    assert any(ln.split()[:2] == ["shows", "v5.13-rc1+32b48bf8514c"] for ln in out.splitlines())


def test_arm64_first_leaf_aging_disappears_at_df6556adf27b():
    # two young 4K leaves, one clear_young over both: before df6556adf27b only the first is aged
    ev = [HostMap(H, 4 * P, 0x1000), SetMemoryRegion(0, 0, 0, 0x100000, 4 * P, H),
          FaultBegin(1, 0, 0x100), FaultCommit(1), FaultBegin(2, 0, 0x101), FaultCommit(2),
          ClearYoung(H, H + 2 * P)]
    res = history.bisect(ev, "arm64", ("wrong-young", "clear_young", "young-bit-not-cleared"))
    [(what, p)] = res.transitions()
    assert what == "disappears" and p.commits[0][0] == "df6556adf27b"
    assert res.present[:5] == [True] * 5                 # v5.12 .. v5.17 all age the first leaf only


def test_bisect_input_errors_are_one_line_exit_2(tmp_path, capsys):
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"schema": "memslot-fuzz-trace/1", "events": json.loads(dumps(
        [HostMap(H, P, 0x1000)]))["events"]}))
    cases = [
        (["bisect", str(PPC_RC1), "--good", "v9.9"], "'v9.9' is not a point of ppc-hv-hash's modelled history"),
        (["bisect", str(PPC_RC1), "--good", "v5.13", "--bad", "v5.12"], "--good v5.13 is not older than --bad v5.12"),
        (["bisect", str(plain)], "a plain trace needs --arch"),
        (["bisect", str(plain), "--arch", "mips"], "records no divergence; name one with --finding"),
        (["bisect", str(plain), "--arch", "mips", "--finding", "warning/host_map/x"], "shows warning/host_map/x at no point"),
        (["bisect", str(PPC_RC1), "--finding", "nonsense"], "expected CLASS/OP/SHAPE"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, (argv, err)


def test_list_commits_prints_every_point_with_its_subject(capsys):
    assert main(["list", "--commits", "--arch", "ppc-hv-hash"]) == 0
    out = capsys.readouterr().out
    assert "  v5.13-rc1+32b48bf8514c   32b48bf8514c KVM: PPC: Book3S HV: Fix conversion to gfn-based MMU notifier callbacks" in out
    assert out.index("b1c5356e873c") < out.index("32b48bf8514c") < out.index("da3bb206c9ce")


def test_run_matrix_fuzzes_each_adjacent_pair(tmp_path, capsys):
    rc = main(["run", "--arch", "mips", "--matrix", "--max-traces", "2", "--max-time", "120", "--seed", "1",
               "--quiet", "--out", str(tmp_path / "out"), "--report", str(tmp_path / "r.json")])
    assert rc in (0, 1)
    doc = json.loads((tmp_path / "r.json").read_text())
    pairs = [(r["old"], r["new"]) for r in doc["runs"]]
    vs = [v for v in registry.versions_for("mips") if v != "series-v1"]
    assert pairs == list(zip(vs, vs[1:]))
    assert main(["run", "--arch", "mips", "--matrix", "--old", "v5.13"]) == 2
    assert "drop --old/--new" in capsys.readouterr().err
