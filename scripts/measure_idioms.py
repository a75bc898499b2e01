"""Memory of the coupling idioms of tests/test_idioms.py, at depth 4 and 16.

For each idiom (feature halves, NHWC channels, strided interleave, tuple
unpack, array_split, roll, constant permutation, .at[].set, interleaved and
checkerboard masks): the bytes ``jaxinv.vjp`` keeps besides the parameters,
unrolled and in ``lax.scan``, and the XLA temp memory of the jitted scanned
gradient beside ``jax.grad``'s. Prints a markdown table.

    python scripts/measure_idioms.py
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import jax  # noqa: E402

import jaxinv  # noqa: E402
import test_idioms as T  # noqa: E402

DEPTHS = (4, 16)


def temp_bytes(grad, params, x) -> int:
    return jax.jit(grad).lower(params, x).compile().memory_analysis().temp_size_in_bytes


def main() -> None:
    print("| idiom | kept besides params, unrolled | kept, scan | scan: XLA temp, jaxinv.grad | scan: XLA temp, jax.grad |")
    print("|---|---:|---:|---:|---:|")
    for idiom in T.IDIOMS:
        kept = {kind: " / ".join(f"{T.activation_bytes(idiom, kind, d):,}" for d in DEPTHS) for kind in T.NETS}
        loss = T.loss_of(T.NETS["scan"](T.IDIOMS[idiom][0]))
        ours, plain = [], []
        for d in DEPTHS:
            params, x = T.inputs(idiom, "scan", d)
            ours.append(temp_bytes(jaxinv.grad(loss, argnums=(0, 1)), params, x))
            plain.append(temp_bytes(jax.grad(loss, argnums=(0, 1)), params, x))
        print(f"| {idiom} | {kept['unrolled']} | {kept['scan']} | {ours[0]:,} / {ours[1]:,} | "
              f"{plain[0]:,} / {plain[1]:,} |")


if __name__ == "__main__":
    main()
