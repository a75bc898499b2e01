"""``python -m jaxinv.demo --quick`` prints a row per depth, with gradients equal to jax.grad's."""

from jaxinv import demo


def table_rows(text):
    lines = [l for l in text.splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in l.strip("|").split("|")] for l in lines[2:]]
    return header, rows


def test_demo_quick(capsys):
    demo.main(["--quick"])
    header, rows = table_rows(capsys.readouterr().out)
    assert [int(r[0]) for r in rows] == list(demo.QUICK_DEPTHS)
    assert all(len(r) == len(header) for r in rows)
    first = header.index("max abs Δgrad: invertible")
    grad_cols = range(first, len(header))  # invertible, jaxinv.grad, checkpoint
    for r in rows:
        for i in grad_cols:
            assert float(r[i]) < 1e-5, (header[i], r)


def test_demo_depths_option(capsys):
    rows = demo.main(["--quick", "--depths", "1", "3", "--repeats", "1"])
    _, printed = table_rows(capsys.readouterr().out)
    assert [r.depth for r in rows] == [1, 3] == [int(r[0]) for r in printed]
