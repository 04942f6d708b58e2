"""Time-to-train planner: alpha-beta formulas by hand, the paper's row, sanity, CLI."""

import math
import os
import re
import subprocess
import sys

import pytest

from chainer_resnet import plan, recipes
from chainer_resnet.plan import Link

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_ARGV = ['--recipe', 'akiba2017', '--gpus', '1024', '--gpus-per-node', '8',
              '--gpu', 'p100', '--interconnect', 'fdr']
BASE = plan.NCCL_BASE_US * 1e-6
# Round numbers so the hand computations below are easy to check.
INTRA = Link('test-intra', 10e9, 2e-6, 'test')
NET = Link('test-net', 5e9, 20e-6, 'test')


def run_cli(argv, capsys):
    assert plan.main(argv) == 0
    return capsys.readouterr().out.rstrip('\n').split('\n')


# --- one-level formulas, hand-computed ------------------------------------------------
def test_ring_allreduce_by_hand():
    # p = 4, n = 1 MB, alpha = 10 us, 1 GB/s: 2*3*10us + 2*3/4 * 1 ms = 1.56 ms.
    assert plan.ring_allreduce_s(4, 1e6, 1e-5, 1e9) == pytest.approx(1.56e-3)
    # p = 2: one step each way; half of n crosses twice = n.
    assert plan.ring_allreduce_s(2, 1e6, 1e-5, 1e9) == pytest.approx(2e-5 + 1e-3)
    assert plan.ring_allreduce_s(1, 1e6, 1e-5, 1e9) == 0


def test_tree_allreduce_by_hand():
    # p = 8: depth 3, up and down: 6 alpha; bandwidth 2 n beta = 2 ms.
    assert plan.tree_allreduce_s(8, 1e6, 1e-5, 1e9) == pytest.approx(6e-5 + 2e-3)
    # p = 5: depth floor(log2 5) = 2.
    assert plan.tree_allreduce_s(5, 1e6, 1e-5, 1e9) == pytest.approx(4e-5 + 2e-3)
    assert plan.tree_allreduce_s(1, 1e6, 1e-5, 1e9) == 0


def test_tree_beats_ring_on_latency_ring_wins_nothing_on_bandwidth():
    # Latency only: log vs linear. Bandwidth only: 2(p-1)/p n <= 2 n.
    assert plan.tree_allreduce_s(1024, 0, 1e-5, 1e9) < plan.ring_allreduce_s(1024, 0, 1e-5, 1e9)
    assert (plan.ring_allreduce_s(1024, 1e8, 0, 1e9)
            <= plan.tree_allreduce_s(1024, 1e8, 0, 1e9))


# --- over nodes ---------------------------------------------------------------------
def test_single_node_uses_the_intra_link_only():
    n = 1e6
    got = plan.allreduce_s('ring', 4, 8, n, INTRA, NET)
    assert got == pytest.approx(BASE + 2 * 3 * 2e-6 + 2 * 3 / 4 * n / 10e9)
    # NCCL's tree inside one node is a chain of 4: 2*3 steps, 2 n / B.
    got = plan.allreduce_s('tree', 4, 8, n, INTRA, NET)
    assert got == pytest.approx(BASE + 2 * 3 * 2e-6 + 2 * n / 10e9)


def test_flat_ring_over_nodes_by_hand():
    # 16 GPUs, 4 per node: 30 steps, 2 * 4 = 8 of them cross the network;
    # bandwidth limited by min(10 GB/s intra, 2 rails x 5 GB/s) = 10 GB/s.
    n = 4e6
    want = BASE + 22 * 2e-6 + 8 * 20e-6 + 2 * 15 / 16 * n / 10e9
    assert plan.allreduce_s('ring', 16, 4, n, INTRA, NET, rails=2) == pytest.approx(want)
    # One rail: the network (5 GB/s) is the slowest link.
    want = BASE + 22 * 2e-6 + 8 * 20e-6 + 2 * 15 / 16 * n / 5e9
    assert plan.allreduce_s('ring', 16, 4, n, INTRA, NET, rails=1) == pytest.approx(want)


def test_flat_ring_on_uniform_links_is_the_textbook_ring():
    link = Link('same', 5e9, 20e-6, 'test')
    n = 3e6
    assert plan.allreduce_s('ring', 32, 8, n, link, link) == pytest.approx(
        BASE + plan.ring_allreduce_s(32, n, 20e-6, 5e9))


def test_one_gpu_per_node_is_all_network():
    n = 1e6
    assert plan.allreduce_s('ring', 8, 1, n, INTRA, NET) == pytest.approx(
        BASE + plan.ring_allreduce_s(8, n, 20e-6, 5e9))


def test_tree_over_nodes_by_hand():
    # 32 GPUs, 4 per node, 8 nodes: chain of 4 (3 steps) + depth 3, up and down.
    n = 2e6
    want = BASE + 2 * (3 * 2e-6 + 3 * 20e-6) + 2 * n / 5e9
    assert plan.allreduce_s('tree', 32, 4, n, INTRA, NET) == pytest.approx(want)


def test_hierarchical_composition_by_hand():
    # 16 GPUs, 4 per node, 4 nodes, 2 rails: reduce-scatter + all-gather in the
    # node (3 steps, 3/4 n each), then 4 concurrent rings of n/4 over 4 nodes,
    # each with a quarter of the node's 10 GB/s.
    n = 8e6
    inside = 2 * (BASE + 3 * 2e-6 + 3 / 4 * n / 10e9)
    across = BASE + 2 * 3 * 20e-6 + 2 * 3 / 4 * (n / 4) / (10e9 / 4)
    got = plan.allreduce_s('hier', 16, 4, n, INTRA, NET, rails=2)
    assert got == pytest.approx(inside + across)
    # The same as the pure functions composed.
    assert got == pytest.approx(
        2 * (BASE + 3 * 2e-6 + 3 / 4 * n / 10e9)
        + BASE + plan.ring_allreduce_s(4, n / 4, 20e-6, 10e9 / 4))


def test_latency_and_bandwidth_parts_add_up():
    lat, bw = plan.allreduce_parts('ring', 16, 4, 4e6, INTRA, NET, rails=2)
    assert lat == pytest.approx(BASE + 22 * 2e-6 + 8 * 20e-6)
    assert lat + bw == pytest.approx(plan.allreduce_s('ring', 16, 4, 4e6, INTRA, NET, 2))


def test_unknown_algorithm_is_an_error():
    with pytest.raises(ValueError, match='not one of'):
        plan.allreduce_s('butterfly', 16, 4, 1e6, INTRA, NET)


# --- the paper's row and the record table ---------------------------------------------
def test_paper_machine_within_25_percent_of_15_minutes(capsys):
    lines = run_cli(PAPER_ARGV, capsys)
    minutes = float(re.fullmatch(r'total: (\d+\.\d+) min', lines[-1]).group(1))
    assert abs(minutes / 15 - 1) <= 0.25
    p = plan.plan_from_args(plan.build_parser().parse_args(PAPER_ARGV))
    assert (p.gpus, p.nodes, p.global_batch, p.iterations) == (1024, 128, 32768, 3519)
    assert p.allreduce_bytes == 25557032 * 2       # fp16 on the wire (method.md §5)
    assert p.overlap == 'none' and p.algorithm == 'ring'


def test_paper_is_compute_bound_with_allreduce_second():
    p = plan.plan_from_args(plan.build_parser().parse_args(PAPER_ARGV))
    terms = dict(p.terms())
    ranked = sorted(terms, key=terms.get, reverse=True)
    assert ranked[:2] == ['compute', 'allreduce (exposed)']
    assert p.efficiency == pytest.approx(terms['compute'] / p.total_s)


def test_record_rows():
    rows = plan.record_plans()
    assert len(rows) >= 3
    paper = [p for rec, p in rows if rec.who.startswith('Akiba')][0]
    assert abs(paper.total_s / 900 - 1) <= 0.25
    goyal = [p for rec, p in rows if rec.who.startswith('Goyal')][0]
    assert goyal.global_batch == 8192 and goyal.allreduce_bytes == 25557032 * 4
    # At least three rows meet their goal (docs/time-to-train.md says which miss).
    assert sum(abs(p.total_s / rec.published_s - 1) <= rec.goal for rec, p in rows) >= 3


def test_doc_table_is_the_scripts_output():
    with open(os.path.join(ROOT, 'docs', 'time-to-train.md'), encoding='utf-8') as f:
        doc = f.read()
    for line in plan.records_lines():
        assert line in doc, 'docs/time-to-train.md is stale; paste: ' + line


# --- monotonic sanity -----------------------------------------------------------------
def _plan(**kw):
    args = dict(recipe='akiba2017', gpus=1024, gpus_per_node=8, gpu='p100',
                interconnect='fdr')
    args.update(kw)
    return plan.make_plan(**args)


@pytest.mark.parametrize('algorithm', plan.ALGORITHMS)
def test_more_bandwidth_is_never_slower(algorithm):
    for nets in (('10gbe', '25gbe', '50gbe', '100gbe'), ('fdr', 'edr', 'hdr', 'ndr')):
        times = [_plan(interconnect=n, algorithm=algorithm, intra='nvlink-v100').total_s
                 for n in nets]
        assert times == sorted(times, reverse=True), nets
    by_rails = [_plan(rails=r, algorithm=algorithm, intra='nvswitch-a100').total_s
                for r in (1, 2, 4)]
    assert by_rails == sorted(by_rails, reverse=True)
    by_intra = [_plan(intra=i, algorithm=algorithm).total_s
                for i in ('pcie-qpi', 'pcie', 'nvlink-p100', 'nvlink-v100')]
    assert by_intra == sorted(by_intra, reverse=True)


def test_fp16_never_more_bytes_than_fp32():
    r16 = recipes.resolve('akiba2017', ['allreduce_grad_dtype=float16'])
    r32 = recipes.resolve('akiba2017', ['allreduce_grad_dtype=float32'])
    for algorithm in plan.ALGORITHMS:
        p16, p32 = _plan(recipe=r16, algorithm=algorithm), _plan(recipe=r32, algorithm=algorithm)
        assert p16.allreduce_bytes * 2 == p32.allreduce_bytes
        assert p16.allreduce_per_iter_s() <= p32.allreduce_per_iter_s()
        assert p16.total_s <= p32.total_s


@pytest.mark.parametrize('algorithm', plan.ALGORITHMS)
@pytest.mark.parametrize('gpu', ['p100', 'v100'])
def test_more_gpus_never_cheaper_allreduce_per_iteration(algorithm, gpu):
    counts = [2 ** k for k in range(0, 13)]
    per_iter = [_plan(gpus=n, gpu=gpu, algorithm=algorithm).allreduce_per_iter_s()
                for n in counts]
    assert per_iter[0] == 0
    assert all(b >= a for a, b in zip(per_iter, per_iter[1:])), per_iter
    # ... while iterations fall as the global batch grows.
    iters = [_plan(gpus=n).iterations for n in counts]
    assert iters == sorted(iters, reverse=True)


def test_overlap_never_slower_and_hides_at_most_the_allreduce():
    none, hidden = _plan(overlap='none'), _plan(overlap='backward')
    assert hidden.total_s <= none.total_s
    assert 0 <= hidden.exposed_allreduce_per_iter_s <= none.exposed_allreduce_per_iter_s


def test_data_loading_counts_only_beyond_compute():
    fed, starved = _plan(cores_per_gpu=8), _plan(cores_per_gpu=0.25)
    assert dict(fed.terms())['data loading (beyond compute)'] == 0
    t = dict(starved.terms())
    assert t['data loading (beyond compute)'] == pytest.approx(
        starved.iterations * (starved.load_per_iter_s - starved.compute_per_iter_s))


# --- virtual workers ------------------------------------------------------------------
def test_virtual_workers_reproduce_the_paper_arithmetic_on_64_gpus():
    big = _plan(gpus=1024)
    small = _plan(gpus=64, virtual_workers=16)
    assert small.workers == big.workers == 1024
    assert small.global_batch == big.global_batch == 32768
    assert small.iterations == big.iterations == 3519
    assert small.compute_per_iter_s == pytest.approx(16 * big.compute_per_iter_s)
    # One allreduce per iteration, over 64 ranks, not 1,024.
    assert small.allreduce_per_iter_s() < big.allreduce_per_iter_s()


def test_virtual_workers_flag(capsys):
    lines = run_cli(PAPER_ARGV[:3] + ['64'] + PAPER_ARGV[4:] + ['--virtual-workers', '16'],
                    capsys)
    assert any('workers 1,024 (16 per GPU), global batch 32,768' in line for line in lines)


def test_virtual_workers_default_to_the_recipe_field():
    r = recipes.resolve('akiba2017', ['virtual_workers_per_rank=16'])
    p = plan.make_plan(r, 64)
    assert (p.virtual_workers, p.global_batch) == (16, 32768)


# --- command line ---------------------------------------------------------------------
def test_last_line_format_and_set_overrides(capsys):
    lines = run_cli(['--gpus', '128', '--gpu', 'v100-fp32', '--interconnect', 'edr',
                     '--set', 'batch_per_worker=64', '--set', 'epochs=45'], capsys)
    assert re.fullmatch(r'total: \d+\.\d{2} min', lines[-1])
    assert any('global batch 8,192' in line and '45 epochs' in line for line in lines)
    assert any(line.startswith('scaling efficiency: ') for line in lines)


def test_measured_rate_as_a_number(capsys):
    lines = run_cli(['--gpus', '16', '--gpu', '150'], capsys)
    assert any('(150 img/s per GPU)' in line for line in lines)


@pytest.mark.parametrize('argv', [['--gpu', 'tpu'], ['--set', 'nope=1'], ['--gpus', '0']])
def test_bad_input_exits_2_with_a_message(argv, capsys):
    assert plan.main(argv) == 2
    assert capsys.readouterr().err.startswith('error: ')


def test_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip('matplotlib')
    out = tmp_path / 'plan.png'
    lines = run_cli(PAPER_ARGV + ['--plot', str(out)], capsys)
    with open(out, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert re.fullmatch(r'total: \d+\.\d{2} min', lines[-1])


def test_sweep_covers_8_to_4096():
    rows = plan.sweep(_plan())
    assert [n for n, _, _ in rows] == [2 ** k for k in range(3, 13)]
    assert all(0 < e <= 1 for _, _, e in rows)


def test_cli_does_not_import_chainer():
    code = ('import sys; from chainer_resnet import plan; plan.main({!r}); '
            'assert "chainer" not in sys.modules and "cupy" not in sys.modules'
            .format(PAPER_ARGV))
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)


def test_bn_channel_count():
    # conv1 BN + per stage: blocks * (c + c + 4c) + 4c for the projection.
    stages = ((64, 3), (128, 4), (256, 6), (512, 3))
    assert plan.RESNET50_BN_CHANNELS == 64 + sum(n * 6 * c + 4 * c for c, n in stages)
    assert math.isclose(plan.RESNET50_PARAMS, 25557032)
