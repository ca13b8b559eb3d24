"""`pyvpn bench --fleet N` (tunnel/lab/fleetbench.py): a fleet behind NATs on one
machine, with real etcd and coturn, and the figures an operator sizes one by."""

import json
import subprocess
import sys

import pytest

from tunnel.lab.etcd import etcd_problem
from tunnel.lab.testbed import host_problem, missing_tools, pyvpn_env

from ..bed import leftovers
from ..conftest import needs

pytestmark = pytest.mark.netns


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunnel", "bench", *args], capture_output=True,
                          text=True, env=pyvpn_env(), timeout=300)  # fmt: skip


@needs(etcd_problem() or host_problem() or missing_tools(("turnserver", "nft", "conntrack")))
@pytest.mark.xdist_group("lab")  # four hosts, etcd, coturn and iperf3: one lab run at a time
def test_bench_fleet_prints_every_figure(tmp_path):
    out = tmp_path / "fleet.json"
    done = bench("--fleet", "3", "--time", "1", "--json", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["hosts"] == 3 and result["full_mesh_s"] >= 0
    # Each host wrote its endpoints at least once; the leases are renewed at rest.
    assert result["registry_during_mesh"]["puts"] >= 3
    assert result["registry_per_s_at_rest"]["requests"] > 0
    assert result["direct_gbps"] > 0 and result["relayed_gbps"] > 0
    assert "| TCP, relayed (cone to symmetric) |" in done.stdout
    assert leftovers() == []


def test_bench_fleet_wants_three_hosts_or_more():
    done = bench("--fleet", "2")
    assert done.returncode == 2
    assert "--fleet takes 3 to 50 hosts" in done.stderr
