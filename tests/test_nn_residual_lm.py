"""A small Flax NNX transformer language model, converted to reversible form
with ``jaxinv.nn.reversible_blocks`` (its own blocks, its own parameters), trains
like the original on text the test makes, while the memory its backward pass
keeps stays flat in depth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinv.nn import reversible_blocks

from helpers import nbytes, nnx_train_step

nnx = pytest.importorskip("flax.nnx")
optax = pytest.importorskip("optax")

D_MODEL, HEADS, SEQ, BATCH, STEPS = 32, 2, 24, 16, 300


def make_text(n_sentences=400, seed=0) -> str:
    """Sentences from a tiny grammar: learnable structure, nothing to download."""
    rng = np.random.default_rng(seed)
    subjects, verbs, objects = ["the cat", "a dog", "my bird", "the fox"], ["sees", "likes", "chases"], \
        ["the ball", "a mouse", "the moon", "some fish"]
    return " ".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(n_sentences))


TEXT = make_text()
VOCAB = sorted(set(TEXT))
TOKENS = np.array([VOCAB.index(c) for c in TEXT], np.int32)


def batches(seed=0):
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, len(TOKENS) - SEQ - 1, BATCH)
        window = np.stack([TOKENS[s:s + SEQ + 1] for s in starts])
        yield window[:, :-1], window[:, 1:]


class Block(nnx.Module):
    """A pre-LayerNorm transformer block: x + attention(x), then + mlp(.)."""

    def __init__(self, rngs):
        self.ln1 = nnx.LayerNorm(D_MODEL, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=HEADS, in_features=D_MODEL, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(D_MODEL, rngs=rngs)
        self.up = nnx.Linear(D_MODEL, 4 * D_MODEL, rngs=rngs)
        self.down = nnx.Linear(4 * D_MODEL, D_MODEL, rngs=rngs)

    def attention(self, x):
        return self.attn(self.ln1(x), mask=nnx.make_causal_mask(x[..., 0]))

    def mlp(self, x):
        return self.down(nnx.gelu(self.up(self.ln2(x))))

    def __call__(self, x):
        x = x + self.attention(x)
        return x + self.mlp(x)


class LanguageModel(nnx.Module):
    """``form=None``: the original; ``"revnet"`` or ``"momentum"``: its blocks run reversibly."""

    def __init__(self, depth, form=None, *, rngs):
        self.embed = nnx.Embed(len(VOCAB), D_MODEL, rngs=rngs)
        self.position = nnx.Embed(SEQ, D_MODEL, rngs=rngs)
        self.blocks = getattr(nnx, "List", list)([Block(rngs) for _ in range(depth)])  # nnx.List: flax >= 0.12
        self.ln = nnx.LayerNorm(D_MODEL, rngs=rngs)
        self.head = nnx.Linear(D_MODEL, len(VOCAB), rngs=rngs)
        self.form = form

    def __call__(self, tokens):
        h = self.embed(tokens) + self.position(jnp.arange(tokens.shape[1]))
        if self.form is None:
            for block in self.blocks:
                h = block(h)
        else:
            h = reversible_blocks(list(self.blocks), lambda b: (b.attention, b.mlp), form=self.form)(h)
        return self.head(self.ln(h))


def loss_fn(model, inputs, targets):
    return optax.softmax_cross_entropy_with_integer_labels(model(inputs), targets).mean()


def train(form, depth=2, steps=STEPS):
    model = LanguageModel(depth, form, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    step = nnx_train_step(loss_fn)
    data = batches()
    return np.array([float(step(model, optimizer, *next(data))) for _ in range(steps)])


def smoothed(curve, window=30):
    return np.convolve(curve, np.ones(window) / window, mode="valid")


@pytest.fixture(scope="module")
def original_curve():
    return train(None)


@pytest.mark.parametrize("form", ["revnet", "momentum"])
def test_the_converted_model_trains_like_the_original(form, original_curve):
    curve = train(form)
    original, converted = smoothed(original_curve), smoothed(curve)
    start = np.log(len(VOCAB))
    assert original[-1] < 0.6 * start and converted[-1] < 0.6 * start   # both learn the grammar
    # the curves track each other all along, not only at the end
    assert np.max(np.abs(converted - original) / original) < 0.25, (original[::30], converted[::30])


def residual_bytes_beyond_params(model, inputs, targets):
    graphdef, state = nnx.split(model)
    _, vjp_fn = jax.vjp(lambda state: loss_fn(nnx.merge(graphdef, state), inputs, targets), state)
    return nbytes(vjp_fn) - nbytes(state)


@pytest.mark.parametrize("form", ["revnet", "momentum"])
def test_the_converted_models_backward_pass_keeps_memory_flat_in_depth(form):
    inputs, targets = next(batches())
    kept = {depth: residual_bytes_beyond_params(LanguageModel(depth, form, rngs=nnx.Rngs(0)), inputs, targets)
            for depth in (2, 6)}
    original = {depth: residual_bytes_beyond_params(LanguageModel(depth, rngs=nnx.Rngs(0)), inputs, targets)
                for depth in (2, 6)}
    activation = BATCH * SEQ * D_MODEL * 4
    assert kept[2] == kept[6]
    assert original[6] - original[2] > 4 * 4 * activation   # the original keeps several activations per block
