"""Write notebooks/06_text_to_image.ipynb from the cells below (run from /work/main)."""
import json
import sys

CELLS = []


def md(text, tags=None):
    CELLS.append(("markdown", text.strip("\n"), tags))


def code(text, tags=None):
    CELLS.append(("code", text.strip("\n"), tags))


md(r"""
# 6. Text to image: Imagen and DALL-E 2

[![Open In Colab](../book/images/colab-badge.svg)](https://colab.research.google.com/github/vlm-course/connecting-language-to-the-world/blob/main/notebooks/06_text_to_image.ipynb)

Chapter 5's denoiser drew "a red circle" when it was given the label *red circle*. A text-to-image
model is given a sentence instead: "a small red circle at the top left", "a red circle to the left
of a blue square". This chapter builds the two designs that defined the field in 2022.
**Imagen** {cite}`saharia2022photorealistic` conditions a diffusion UNet on the token states of a
**frozen** text encoder through cross-attention. **DALL-E 2** (unCLIP) {cite}`ramesh2022hierarchical`
goes through CLIP {cite}`radford2021learning`: a *prior* turns the CLIP text embedding into a CLIP
image embedding, and a *decoder* draws an image from that. Every claim about them is measured on
prompts, including prompts the models never saw in training, by a judge that reads whole scenes.

**What you will learn**
- captions of one- and two-shape scenes, and splits that hold out colour–kind pairs and colour
  pairings, so faithfulness to new prompts is measured;
- cross-attention, written from its equation and equal to `diffusers`' attention;
- a `diffusers` `UNet2DConditionModel` conditioned on two frozen text encoders: chapter 2's CLIP
  text tower and a small language model trained on text only;
- classifier-free guidance on text, its convention, and the trade-off curve a sweep over w draws;
- Imagen's dynamic thresholding against static clipping at high guidance;
- unCLIP: a diffusion prior, a decoder, **variations** and **interpolations** of images;
- saving and loading the model the `diffusers` way, and calling it like a `diffusers` pipeline.

**Prerequisites**: chapter 2 (CLIP), chapter 5 (diffusion, classifier-free guidance on labels).

**Run time**: about 4 minutes on a CPU. The text-to-image models and the unCLIP decoder took half an
hour each to train, so they ship with `vlmlib` (made by `python -m tools.train_text2image` and
`python -m tools.train_unclip`); the chapter trains a short run of its own to show the loop, and
says which numbers come from which.
""")

code(r"""
import sys

if "google.colab" in sys.modules:  # in Colab only: install the helper package
    %pip install -q "vlmlib @ git+https://github.com/vlm-course/connecting-language-to-the-world@main"

import vlmlib

settings = vlmlib.setup(seed=0)
""")

md(r"""
## From labels to sentences

A prompt names one shape ("a small red circle at the top left", or less: "a red shape"), or two
shapes and how they stand to each other ("a red circle to the left of a blue square"). The relation
is read from the shapes' grid cells. Here are training scenes with the captions the model learns from.
""")

code(r"""
import json
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown

from vlmlib import diffusion as D
from vlmlib import text2image as T

rng = np.random.default_rng(0)
one_x, one_s = T.scenes(6, "one", "train", seed=1)
two_x, two_s = T.scenes(6, "two", "train", seed=1)
examples = T.training_captions(one_s + two_s, rng)
vlmlib.show_images(torch.cat([one_x, two_x]), examples, ncols=6, size=1.9, wrap=22);
""")

code(r"""
world = vlmlib.ShapesWorld()
held_pairs = ", ".join(f"{c} {k}" for c, k in world.held_out)
pairings = " and ".join(f"{a} with {b}" for a, b in T.HELD_OUT_COLOUR_PAIRS)
Markdown(f"Two things never occur in training. The colour–kind pairs that ShapesWorld holds out "
         f"({held_pairs}) are never drawn at all, and two-shape scenes never pair the colours "
         f"{pairings}. So the chapter measures four kinds of prompt: one shape of a seen "
         "pair, one shape of a held-out pair, two shapes of a seen pairing, and two shapes of "
         "a held-out pairing (their colour–kind pairs are seen ones; only their company is new).")
""", ["hide-input"])

md(r"""
## Two frozen text encoders

Imagen's key finding, in its abstract {cite}`saharia2022photorealistic`: a generic language model
trained on text alone (T5), kept **frozen**, is a surprisingly good text encoder for image
synthesis, and making it bigger improved both fidelity and image–text alignment much more than
making the image model bigger. (The paper also compares T5-XXL with CLIP's text encoder; we could
not check those numbers, so we quote none.) We compare the two kinds of encoder at our scale:

- **CLIP's text tower** from chapter 2. It learnt its words from images, but only one-shape
  captions: it has never read "to the left of", "above" or "below" (the tokenizer has those words;
  CLIP's embeddings of them were never trained).
- **A small language model trained on text only**: a `transformers` `LlamaForCausalLM` with four
  layers, trained to predict the next word of ShapesWorld captions of one to three shapes, relation
  sentences and question–answer texts about described scenes. It has never seen an image, and none
  of its text mentions a held-out colour–kind pair. It ships with `vlmlib`
  (`python -m tools.train_lm`); chapter 8 will use it again, as LLaVA's language model.

Both stay frozen: the image model reads the states of their last layer, one per token.
""")

code(r"""
from vlmlib import lm

# the shipped pipelines carry their frozen encoders (CLIP's tower is chapter 2's)
pipes = {name: T.TextToImagePipeline.from_pretrained(T.shipped_folder(f"t2i-{name}"),
                                                     device=settings.device)
         for name in T.ENCODERS}
encoders = {name: pipe.text_encoder for name, pipe in pipes.items()}
for name, enc in encoders.items():
    n = sum(p.numel() for p in enc.parameters())
    print(f"{name:>4}: {n / 1e6:.2f} M parameters, token states of width {enc.dim}, "
          f"pooled vector of {enc.pooled_dim}")
lm_model, tokenizer, lm_record = lm.load_lm()
m = lm_record["metrics"]
print(f"the LM on held-out text: perplexity {m['perplexity']:.2f} per word; greedy answers to "
      f"questions about described scenes right {m['answer_accuracy']:.0%} of the time")
questions = {"a large red circle at the top left and a small blue square on the right . "
             "what colour is the square ?": "blue",
             "a small green cross in the centre . where is the green cross ?": "centre",
             "a large yellow triangle at the bottom and a small red cross at the top . "
             "how many shapes are there ?": "two"}
for (q, truth), a in zip(questions.items(), lm.generate_text(lm_model, list(questions), 2)):
    verdict = "right" if a.split()[:1] == truth.split()[:1] else "wrong"
    print(f"  {q}  ->  {a}  ({verdict})")
""")

md(r"""
Does an encoder tell "a red circle to the left of a blue square" from the same words in another
order? Below, the cosine similarity between the pooled vectors of one prompt and three rewrites:
the colours swapped between the shapes (attribute binding), the relation flipped, and the same
scene described the other way round (a true paraphrase).
""")

code(r"""
base = "a red circle to the left of a blue square"
rewrites = {"colours swapped": "a blue circle to the left of a red square",
            "relation flipped": "a red circle to the right of a blue square",
            "same scene, other way round": "a blue square to the right of a red circle"}
rows = {}
for name, enc in encoders.items():
    pooled = torch.nn.functional.normalize(enc.encode([base, *rewrites.values()]).pooled, dim=-1)
    rows[name] = {k: float(pooled[0] @ pooled[i + 1]) for i, k in enumerate(rewrites)}
vlmlib.table(rows, {k: "{:.3f}" for k in rewrites}, first_column="encoder")
""")

code(r"""
c, l = rows["clip"], rows["lm"]
Markdown(f"CLIP's pooled vectors of the colour swap and of the flipped relation are "
         f"{c['colours swapped']:.3f} and {c['relation flipped']:.3f} similar to the original; "
         f"the language model's are {l['colours swapped']:.3f} and {l['relation flipped']:.3f}. "
         "A pooled vector is only part of what the UNet reads (cross-attention sees every token), "
         "so this is a hint, not the measurement: the measurement is what the images show, below.")
""", ["hide-input"])

md(r"""
## Cross-attention: the image asks, the text answers

Inside the UNet, a cross-attention layer lets every image position read the prompt. With image
features X (N positions × C channels) and the text encoder's token states S (L tokens × D):

$$Q = X W_Q^\top,\quad K = S W_K^\top,\quad V = S W_V^\top,\qquad
\mathrm{CrossAttention}(X, S) = \mathrm{softmax}\!\Big(\frac{QK^\top}{\sqrt d}\Big)\,V\,W_O^\top ,$$

per head, with d the width of a head and the heads joined before W_O. Queries come from the image,
keys and values from the text: each pixel takes a weighted average of the tokens it finds
relevant. Padding tokens are masked out of the softmax. It is self-attention (chapter 1) with the
keys and values taken from another sequence.
""")

md(r"""
```{exercise} 6.1 · Cross-attention
:label: ex-6-1
:nonumber:

Write `cross_attention(x, context, w_q, w_k, w_v, w_o, heads, mask=None)`: `x` is (B, N, C),
`context` is (B, L, D); the weights are stored as `nn.Linear` stores them, (out, in), so
Q = x @ w_q.T; `heads` splits the width of Q, K and V; `mask` (B, L) is True for tokens that may be
attended to. Return (B, N, C).
```
""")

md(r"""
```{solution-start} ex-6-1
:class: dropdown
```
""")

code(r"""
# Exercise 6.1: cross-attention from image positions to text tokens
def cross_attention(x, context, w_q, w_k, w_v, w_o, heads, mask=None):
    B, N, _ = x.shape
    q, k, v = x @ w_q.T, context @ w_k.T, context @ w_v.T
    d = q.shape[-1] // heads
    q, k, v = (z.reshape(B, -1, heads, d).transpose(1, 2) for z in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)          # (B, heads, N, L)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    out = scores.softmax(-1) @ v                               # (B, heads, N, d)
    return out.transpose(1, 2).reshape(B, N, heads * d) @ w_o.T
""", ["solution"])

md(r"""
```{solution-end}
```
""")

code(r"""
from vlmlib.exercises import ch06

ch06.check_cross_attention(cross_attention);
""")

md(r"""
The UNet we train is a `diffusers` `UNet2DConditionModel`. Here is the model, and the test that
our equation is what its cross-attention computes: take the first cross-attention layer of the
UNet, give it image features and the token states of two prompts of different lengths (so padding
is masked), and compare with the equation fed the same weights.
""")

code(r"""
enc = encoders["lm"]
config = T.T2IConfig(encoder="lm", text_dim=enc.dim, pooled_dim=enc.pooled_dim)
model = T.TextToImage(config)
unet = model.unet
print(f"UNet2DConditionModel: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M "
      f"parameters, {config.image_size}×{config.image_size} images")
print("down blocks:", [type(b).__name__ for b in unet.down_blocks])
print("up blocks:  ", [type(b).__name__ for b in unet.up_blocks])

attn = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2   # the first cross-attention
cond = enc.encode(["a red circle", "a red circle to the left of a blue square"]).to("cpu")
context = unet.encoder_hid_proj(cond.states)                # token states -> cross_attention_dim
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 64, attn.to_q.in_features, generator=g)  # 8×8 positions of image features
with torch.no_grad():
    theirs = attn(x, encoder_hidden_states=context,
                  attention_mask=((1 - cond.mask.float()) * -10000.0)[:, None, :])
    ours = cross_attention(x, context, attn.to_q.weight, attn.to_k.weight, attn.to_v.weight,
                           attn.to_out[0].weight, attn.heads, cond.mask) + attn.to_out[0].bias
print("largest difference from diffusers:", (ours - theirs).abs().max().item())
assert torch.allclose(ours, theirs, atol=1e-5)
""")

md(r"""
The prompt enters the UNet twice, as in Imagen: the token states through cross-attention at the
8×8 and 4×4 levels (and the middle block), and the pooled vector projected and **added to the
timestep embedding** (`class_embed_type="projection"`), so every residual block hears the gist of
the prompt too. The 32×32 and 16×16 levels have no attention: there it would cost the most. The
pooled vector is first standardised, dimension by dimension, with the mean and spread of the
training captions' vectors: prompts differ by little in these vectors (the language model's [EOS]
states share one large common part), and the projection should see the differences, not the
common part.

## Training with the prompt dropped

Training is chapter 5's loop with sentences for labels: noise a scene, ask the UNet for the clean
image x₀, given the noisy image, the timestep and the prompt. One prompt in ten is replaced by the
empty prompt "", so the same network also learns the unconditional model that classifier-free
guidance needs {cite}`ho2021classifier`.

One choice matters more than it looks: **how much each timestep counts**. Measured as an error in
x₀, predicting ε weights step t by its SNR_t; chapter 5's Min-SNR-5 {cite}`hang2023efficient` caps
that at 5. Both give the noisiest steps, where a sample's layout (which shape goes where) is
decided, almost no weight. The plain x₀ loss weights every step by 1, which leaves the nearly clean
steps, where edges are drawn, with little pull. This chapter clamps the weight between the two:
clamp(SNR_t, 1, 5), Min-SNR-5 with the floor of Salimans and Ho's "truncated SNR" weighting
max(SNR_t, 1) {cite}`salimans2022progressive`. In development runs at 16×16 (not reproduced here)
the plain loss drew the asked colour and place but every kind as a round blob, and Min-SNR-5 drew
the colour but rarely the place. The shipped models differ from those runs in two ways at once,
this weighting and 32×32 images (chapter 5's shipped denoiser's size) instead of 16×16, and we did
not measure the two changes apart.
""")

code(r"""
snr = D.make_schedule("cosine", 1000).snr()
weights = {"ε loss (SNR)": snr, "plain x₀ loss (1)": torch.ones_like(snr),
           "Min-SNR-5, chapter 5": snr.clamp(max=5), "clamp(SNR, 1, 5), this chapter": snr.clamp(1, 5)}
plt.figure(figsize=(6, 2.8))
for (label, wt), style in zip(weights.items(), (":", "--", "-.", "-")):
    plt.plot(wt, style, lw=2 if "this" in label else 1.2, label=label)
plt.yscale("log")
plt.ylim(1e-3, 1e3)
plt.xlabel("timestep t (noisier →)")
plt.ylabel("weight of the x₀ error")
plt.legend(fontsize=7)
plt.title("How much each step counts (cosine schedule)")
plt.show()
""")

md(r"""
A short live run:
""")

code(r"""
live_recipe = T.T2IRecipe(steps=settings.pick(cpu=150, gpu=3000), n_train=settings.pick(cpu=6000, gpu=30000),
                          batch_size=settings.pick(cpu=32, gpu=64))
with vlmlib.stopwatch("chapter 6 live training") as clock:
    live, history, seconds = T.train_text2image(config, live_recipe, enc, device=settings.device,
                                                desc="live training run")
print(f"{len(history['loss'])} steps at batch {live_recipe.batch_size} in {seconds:.0f} s")
""")

code(r"""
shipped = pipes["lm"].record
print(f"shipped models: {shipped['recipe']['steps']:,} steps at batch "
      f"{shipped['recipe']['batch_size']}, about {shipped['metrics']['train_seconds'] / 60:.0f} "
      "min each on one CPU thread")
plt.figure(figsize=(6, 2.6))
for name, pipe in pipes.items():
    plt.plot(pipe.record["history"]["loss"], lw=0.4, alpha=0.8, label=f"shipped, {name} encoder")
plt.plot(history["loss"], lw=0.6, label="live run (lm encoder)")
plt.yscale("log")
plt.xlabel("step")
plt.ylabel("loss")
plt.legend()
plt.show()
""")

md(r"""
The live run has only begun to go down the curve the shipped models followed for thousands of
steps, and its samples (first figure) show it. The better of the two shipped models (second
figure; the code picks it by its stored scores and prints which it is) was asked two prompts of each of the four kinds, two samples each; under every
image is the scene judge's reading (✓ when it is valid and exactly what the prompt asked).
""")

code(r"""
from vlmlib import scene_judge as SJ

judge, judge_record = SJ.load_scene_judge()
sets = T.prompt_sets(2, seed=77)
demo = [p for name in sets for p in sets[name][0]]
specs = [s for name in sets for s in sets[name][1]]
def best_one_shape(pipe):
    m = pipe.record["metrics"]
    return m["sweep"][f"{m['best_guidance']:g}"]["one_seen"]["faithful"]


MAIN = max(pipes, key=lambda name: best_one_shape(pipes[name]))   # the better shipped model
BEST = pipes[MAIN].record["metrics"]["best_guidance"]
ENCODER_NAMES = {"clip": "CLIP's text tower", "lm": "the language model"}
print(f"from here on: the model conditioned on {ENCODER_NAMES[MAIN]} ({MAIN}), "
      f"its best w = {BEST:g}")
live_images = T.generate(live, enc, demo[:4], guidance=BEST, generator=torch.Generator().manual_seed(0),
                         show_progress=False)
vlmlib.show_images(live_images, [f"live: {p}" for p in demo[:4]], ncols=4, size=1.9, wrap=24);
""")

code(r"""
def verdicts(images, specs):
    scenes_read = judge.read_scenes(images)
    valid = judge.validity(images) > 0.5
    out = []
    for sc, sp, v in zip(scenes_read, specs, valid):
        ok = bool(v) and SJ.faithful(sc, T.bar_spec(sp) if "shapes" not in sp else sp)
        what = "; ".join(f"{s['colour']} {s['kind']} {s['position']}" for s in sc) or "nothing"
        out.append(("✓ " if ok else "✗ ") + what)
    return out


images = pipes[MAIN](demo, guidance_scale=BEST, num_inference_steps=20, seed=0,
                     num_images_per_prompt=2)
captions = [f"{p}\n→ {v}" for p, v in zip([p for p in demo for _ in range(2)],
                                           verdicts(images, [s for s in specs for _ in range(2)]))]
vlmlib.show_images(images, captions, ncols=4, size=2.3, wrap=26);
""")

md(r"""
## Classifier-free guidance

Guidance {cite}`ho2021classifier` runs the network twice per step, with the prompt and with the
empty prompt, and extrapolates from the second towards the first:

$$\tilde\varepsilon = \varepsilon_\theta(x_t, \varnothing) + w\,\big(\varepsilon_\theta(x_t, c) - \varepsilon_\theta(x_t, \varnothing)\big).$$

**The convention.** This book's w is `diffusers`' `guidance_scale` and Imagen's w: w = 1 is the
plain conditional model, w = 0 the unconditional one. Ho and Salimans write the same thing as
(1 + w′)·ε(c) − w′·ε(∅), so their w′ = w − 1: their w′ = 1 is our w = 2. (The model here predicts
x₀; the combination is the same for any of ε, x₀ or v, because each is an affine function of the
other given x_t.)
""")

md(r"""
```{exercise} 6.2 · The guidance combination
:label: ex-6-2
:nonumber:

Write `guided(uncond, cond, w)`: the two predictions (same shape) and the scale w in the book's
convention. Return the guided prediction.
```
""")

md(r"""
```{solution-start} ex-6-2
:class: dropdown
```
""")

code(r"""
# Exercise 6.2: classifier-free guidance, the book's (and diffusers') convention
def guided(uncond, cond, w):
    return uncond + w * (cond - uncond)
""", ["solution"])

md(r"""
```{solution-end}
```
""")

code(r"""
ch06.check_guided(guided)

u, c = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
w = 3.0
w_ho = w - 1                                           # Ho & Salimans' w′
assert torch.allclose(guided(u, c, w), (1 + w_ho) * c - w_ho * u, atol=1e-6)
assert torch.allclose(guided(u, c, w), D.guide(u, c, w))   # what every sampler here uses
print("guided(w = 3) equals Ho & Salimans' Eq. 6 with w′ = 2, and vlmlib's guide")
""")

md(r"""
One prompt, the same starting noise, growing w: at w = 0 the prompt is ignored, at w = 1 it is
heard, and from there on guidance pushes harder.
""")

code(r"""
ws = [0.0, 1.0, 2.0, 3.0, 5.0, 7.5]
prompt = "a small yellow cross at the top right"
row = [pipes[MAIN](prompt, guidance_scale=w, num_inference_steps=20, seed=3, num_images_per_prompt=3)
       for w in ws]
grid = torch.stack(row, 1).reshape(-1, 3, 32, 32)
vlmlib.show_images(grid, [f"w = {w:g}" for w in ws] * 3, ncols=len(ws), size=1.5,
                   title=f"“{prompt}”, three seeds");
""")

md(r"""
**The trade-off.** `python -m tools.train_text2image` swept w on 200 prompts of each kind per
point and stored the results beside the weights. Faithfulness is the share of samples that the
scene judge reads as valid and exactly what the prompt asked (for one shape: its colour, kind and
position; for two: both shapes and the relation). Diversity is measured on open prompts ("a red
shape", "a circle", ...): the chance that two samples of one prompt differ (1 − Σp² over what the
judge reads). ShapesWorld-FID compares the one-shape samples with real images in chapter 5's judge's
feature space.
""")

code(r"""
def sweep_rows(record):
    sweep = record["metrics"]["sweep"]
    return {float(w): r for w, r in sweep.items()}


fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
for name, pipe in pipes.items():
    rows_w = sweep_rows(pipe.record)
    wv = sorted(rows_w)
    style = "-" if name == "lm" else "--"
    for key, label in (("one_seen", "one shape, seen"), ("one_heldout", "one shape, held-out"),
                       ("two_seen", "two shapes")):
        axes[0].plot(wv, [rows_w[w][key]["faithful"] for w in wv], style, marker="o", ms=3,
                     label=f"{label} ({name})")
    axes[1].plot([rows_w[w]["fid"] for w in wv], [rows_w[w]["one_seen"]["faithful"] for w in wv],
                 style, marker="o", ms=3, label=name)
    for w in wv:
        axes[1].annotate(f"{w:g}", (rows_w[w]["fid"], rows_w[w]["one_seen"]["faithful"]), fontsize=7)
    axes[2].plot([rows_w[w]["open"]["diversity"] for w in wv],
                 [rows_w[w]["one_seen"]["faithful"] for w in wv], style, marker="o", ms=3, label=name)
    for w in wv:
        axes[2].annotate(f"{w:g}", (rows_w[w]["open"]["diversity"], rows_w[w]["one_seen"]["faithful"]),
                         fontsize=7)
axes[0].set(xlabel="guidance w", ylabel="faithful", title="faithfulness against w")
axes[1].set(xlabel="ShapesWorld-FID (lower: closer to real)", ylabel="faithful, one shape",
            title="faithfulness against fidelity")
axes[2].set(xlabel="diversity on open prompts", ylabel="faithful, one shape",
            title="faithfulness against diversity")
axes[0].legend(fontsize=6)
axes[1].legend(fontsize=7)
plt.tight_layout()
plt.show()
""")

code(r"""
# the stored sweep, checked live at the best w: same prompts, same seed, 200 samples
prompts, specs_one = T.prompt_sets(200)["one_seen"]
images = pipes[MAIN](prompts, guidance_scale=BEST, num_inference_steps=20, seed=0)
live_check = T.score_images(images, prompts, specs_one)
stored = sweep_rows(pipes[MAIN].record)[BEST]["one_seen"]
print(f"w = {BEST:g}, one shape, seen pairs: faithful {live_check['faithful']:.1%} now, "
      f"{stored['faithful']:.1%} stored")
assert abs(live_check["faithful"] - stored["faithful"]) <= 0.05
""")

code(r"""
rw = sweep_rows(pipes[MAIN].record)
lo, hi = min(rw), max(rw)
Markdown(f"For the model conditioned on {ENCODER_NAMES[MAIN]}, one-shape faithfulness went from "
         f"{rw[lo]['one_seen']['faithful']:.0%} at w = {lo:g} to "
         f"{rw[BEST]['one_seen']['faithful']:.0%} at w = {BEST:g} (the best) and "
         f"{rw[hi]['one_seen']['faithful']:.0%} at w = {hi:g}; two-shape prompts went from "
         f"{rw[lo]['two_seen']['faithful']:.0%} to {rw[BEST]['two_seen']['faithful']:.0%}. "
         f"Diversity on open prompts went from {rw[lo]['open']['diversity']:.2f} to "
         f"{rw[hi]['open']['diversity']:.2f} and FID from {rw[lo]['fid']:.0f} to "
         f"{rw[hi]['fid']:.0f}. This is the shape of the guidance paper's curves: more w buys "
         "faithfulness with diversity (one run per point, 200 samples: a share moves by about "
         "three points from sampling alone).")
""", ["hide-input"])

md(r"""
## Dynamic thresholding

Guidance extrapolates, so at large w the predicted x̂₀ leaves the data range [−1, 1]. Chapter 5's
sampler clips it (**static thresholding**, `diffusers`' `clip_sample`): pixels pile up at the
ends, and Imagen found that large w then gives over-saturated, unnatural images. Imagen's
**dynamic thresholding** (§2.3) instead takes, per image and per step, s = a high percentile of
|x̂₀|; if s > 1 it clips x̂₀ to [−s, s] and divides by s, pulling the whole image back in. The
paper does not print the percentile in the text we could check; `diffusers` uses 0.995, and so
do we.
""")

md(r"""
```{exercise} 6.3 · Dynamic thresholding
:label: ex-6-3
:nonumber:

Write `dynamic_threshold(x0, percentile)`: x0 is (B, C, H, W). For each image, s is the
`percentile` quantile of |x0| (`torch.quantile`), at least 1; return x0 clipped to [−s, s] and
divided by s.
```
""")

md(r"""
```{solution-start} ex-6-3
:class: dropdown
```
""")

code(r"""
# Exercise 6.3: Imagen's dynamic thresholding, per image
def dynamic_threshold(x0, percentile):
    s = torch.quantile(x0.abs().reshape(len(x0), -1), percentile, dim=1)
    s = s.clamp(min=1).reshape(-1, 1, 1, 1)
    return x0.clamp(-s, s) / s
""", ["solution"])

md(r"""
```{solution-end}
```
""")

code(r"""
ch06.check_dynamic_threshold(dynamic_threshold)

from diffusers import DDPMScheduler

x0 = torch.randn(4, 3, 16, 16, generator=g) * 2
ref = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.995, sample_max_value=1e6)
assert torch.allclose(dynamic_threshold(x0, 0.995), ref._threshold_sample(x0), atol=1e-6)
print("equal to diffusers' DDPMScheduler(thresholding=True)")
""")

code(r"""
w_high = 7.5
prompts8 = T.prompt_sets(4, seed=11)["one_seen"][0] + T.prompt_sets(4, seed=11)["two_seen"][0]
both = {kind: pipes[MAIN](prompts8, guidance_scale=w_high, num_inference_steps=20, seed=5,
                          threshold=kind) for kind in ("static", "dynamic")}
grid = torch.cat([both["static"], both["dynamic"]])
vlmlib.show_images(grid, [f"static: {p}" for p in prompts8] + [f"dynamic: {p}" for p in prompts8],
                   ncols=8, size=1.7, wrap=20, title=f"w = {w_high:g}");
""")

code(r"""
rows_t = {}
for name, pipe in pipes.items():
    for key, r in pipe.record["metrics"]["thresholding"].items():
        kind, w = key.split("@")
        rows_t[f"{name}, w = {w}, {kind}"] = {"valid": r["valid"], "faithful": r["faithful"],
                                             "clipped pixels": r["clipped"],
                                             "saturation": r["saturation"]}
real = T.saturation(world.sample(200, split="test", seed=9, captions=None).tensor())
rows_t["real images"] = {"valid": None, "faithful": None,
                         "clipped pixels": real["clipped"], "saturation": real["saturation"]}
vlmlib.table(rows_t, {"valid": "{:.1%}", "faithful": "{:.1%}", "clipped pixels": "{:.2%}",
                      "saturation": "{:.3f}"}, first_column="200 one-shape prompts each")
""")

code(r"""
th = pipes[MAIN].record["metrics"]["thresholding"]
gain = {w: th[f"dynamic@{w}"]["valid"] - th[f"static@{w}"]["valid"] for w in ("5", "7.5", "10")}
Markdown(f"With {ENCODER_NAMES[MAIN]} as the encoder, dynamic thresholding changed the share of valid samples "
         "by " + ", ".join(f"{100 * v:+.1f} points at w = {w}" for w, v in gain.items())
         + f", and the share of clipped pixel values from {th['static@7.5']['clipped']:.2%} to "
         f"{th['dynamic@7.5']['clipped']:.2%} at w = 7.5 (real images: {real['clipped']:.2%}).")
""", ["hide-input"])

md(r"""
## Which text encoder? Imagen's claim at our scale

The same UNet, trained the same way, conditioned on each frozen encoder; each at its own best w.
A third model has a **smaller UNet** with the language model, to set the effect of the encoder
beside the effect of the UNet's size, which is the comparison Imagen made.
""")

code(r"""
def best_row(record):
    m = record["metrics"]
    r = m["sweep"][f"{m['best_guidance']:g}"]
    return {"UNet parameters (M)": record.get("unet_parameters", float("nan")) / 1e6,
            "best w": m["best_guidance"], "one shape, seen": r["one_seen"]["faithful"],
            "one shape, held-out pair": r["one_heldout"]["faithful"],
            "two shapes, seen pairing": r["two_seen"]["faithful"],
            "two shapes, held-out pairing": r["two_heldout_pairing"]["faithful"],
            "CLIP score": r["one_seen"].get("clip_score", float("nan"))}


compare = {f"{name} encoder": best_row(pipe.record) for name, pipe in pipes.items()}
small = T.shipped_folder("t2i-lm-small") if "t2i-lm-small" in T.SHIPPED else None
if small is not None and (small / "record.json").exists():
    compare["lm encoder, smaller UNet"] = best_row(json.load(open(small / "record.json")))
vlmlib.table(compare, {"UNet parameters (M)": "{:.2f}", "best w": "{:g}", "CLIP score": "{:.1f}",
                       **{k: "{:.1%}" for k in list(compare["lm encoder"])[2:6]}},
             first_column="faithful (200 prompts each)")
for k, v in compare["lm encoder"].items():
    if k not in ("UNet parameters (M)", "best w"):
        vlmlib.record(f"ch6 lm encoder: {k}", v)
for k, v in compare["clip encoder"].items():
    if k not in ("UNet parameters (M)", "best w"):
        vlmlib.record(f"ch6 clip encoder: {k}", v)
""")

md(r"""
**The bars.** Checked on the shipped models (the numbers stored with them, re-checked live above
at one point): one-shape prompts of seen pairs right in at least 95% of samples, held-out pairs in
at least 85%, two-shape prompts fully right in at least 70% for the better encoder, and dynamic
thresholding at least as valid as static clipping at w ≥ 5.
""")

code(r"""
main = compare[f"{MAIN} encoder"]
better = max(compare, key=lambda k: compare[k]["two shapes, seen pairing"])
vlmlib.expect(f"ch6 one shape, seen pairs ({MAIN} encoder)", main["one shape, seen"], at_least=0.95)
vlmlib.expect(f"ch6 one shape, held-out pairs ({MAIN} encoder)", main["one shape, held-out pair"],
              at_least=0.85)
vlmlib.expect(f"ch6 two shapes, seen pairings ({better})", compare[better]["two shapes, seen pairing"],
              at_least=0.70)
for w in ("5", "7.5", "10"):
    vlmlib.expect(f"ch6 dynamic minus static validity at w = {w}", gain[w], at_least=0.0)
""")

code(r"""
c, l = compare["clip encoder"], compare["lm encoder"]
key = "two shapes, seen pairing"
text = (f"Two-shape prompts were fully right {l[key]:.0%} of the time with the language "
        f"model and {c[key]:.0%} with CLIP's text tower (held-out pairings: "
        f"{l['two shapes, held-out pairing']:.0%} and {c['two shapes, held-out pairing']:.0%}); "
        f"one-shape prompts {l['one shape, seen']:.0%} and {c['one shape, seen']:.0%}. ")
if "lm encoder, smaller UNet" in compare:
    s = compare["lm encoder, smaller UNet"]
    enc_gain, unet_gain = l[key] - c[key], l[key] - s[key]
    ratio = l["UNet parameters (M)"] / s["UNet parameters (M)"]
    verdict = ("the encoder moved it more than the UNet's size did, as Imagen found"
               if abs(enc_gain) > abs(unet_gain) else
               "the UNet's size moved it more than the encoder did, "
               "unlike Imagen's finding")
    text += (f"Going from CLIP's tower to the language model changed two-shape faithfulness "
             f"by {100 * enc_gain:+.0f} points; making the UNet {ratio:.1f} times larger "
             f"(with the language model) changed it by {100 * unet_gain:+.0f} points: "
             f"at our scale {verdict}. ")
text += ("Two caveats: CLIP's tower never read a relation word, so the encoders differ in "
         "the text they were trained on as much as in kind (which is Imagen's point too: "
         "T5 had read far more text than CLIP); and this is one model of each, one seed.")
Markdown(text)
""", ["hide-input"])

md(r"""
## DALL-E 2: a prior and a decoder

unCLIP factorises text to image through CLIP's image embedding z_i: P(x | y) = P(x | z_i) P(z_i | y)
{cite}`ramesh2022hierarchical`. The **decoder** draws an image from z_i: a `UNet2DConditionModel`
that reads z_i projected into four extra context tokens and added to the timestep embedding, with
z_i zeroed 10% of the time in training so that guidance works (the paper's decoder also reads the
caption; ours reads z_i alone). The **prior** maps a CLIP text embedding z_t to an image embedding:
the paper's better prior is a diffusion model over z_i, a causal transformer that reads the
caption's tokens, z_t, the timestep, the noised z_i and a final query, and predicts the clean z_i
directly. Ours reads [z_t, timestep, noised z_i, query] (no caption tokens). At sampling we draw
two and keep the one with the larger dot product with z_t, as the paper does. The decoder ships with `vlmlib` (with the CLIP whose embeddings it reads);
the priors are small and train here.
""")

code(r"""
from vlmlib import unclip as U

decoder, clip_model, decoder_record = U.load_decoder()
m = decoder_record["metrics"]
print(f"decoder: {decoder_record['recipe']['steps']:,} steps; redraws real one-shape scenes from "
      f"their CLIP embedding with the same colour, kind and position {m['redraw_test']:.0%} "
      f"of the time (held-out pairs: {m['redraw_holdout']:.0%})")
prior_config = U.PriorConfig(steps=settings.pick(cpu=600, gpu=3000))
pairs = U.prior_training_pairs(clip_model, prior_config.n_train)
with vlmlib.stopwatch("chapter 6 prior training"):
    prior, prior_history, _ = U.train_prior(clip_model, prior_config, data=pairs)
    regression, _ = U.train_regression_prior(pairs, steps=settings.pick(cpu=400, gpu=2000))
""")

md(r"""
**Variations.** Encode an image with CLIP, decode its embedding several times: the decoder keeps
what CLIP's embedding holds and draws the rest anew. A text-conditioned model has no way to be given
an image.
""")

code(r"""
originals, _ = T.scenes(4, "one", "test", seed=21)
z = U.image_embeddings(clip_model, originals)
variations = U.decode(decoder, z.repeat_interleave(5, 0), guidance=3.0,
                      generator=torch.Generator().manual_seed(1))
grid = torch.cat([originals[:, None], variations.view(4, 5, 3, 32, 32)], 1).reshape(-1, 3, 32, 32)
vlmlib.show_images(grid, (["original"] + ["variation"] * 5) * 4, ncols=6, size=1.5);
""")

md(r"""
**Interpolation.** Walk from one image's embedding to another's along the sphere (slerp) and
decode each point from the same starting noise.
""")

code(r"""
a, b = T.scenes(2, "one", "test", seed=31)[0]
za, zb = U.image_embeddings(clip_model, torch.stack([a, b]))
fractions = torch.linspace(0, 1, 7)
path = torch.stack([U.slerp(za, zb, f) for f in fractions])
size = decoder.config.image_size
noise = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2)).expand(7, -1, -1, -1)
walk = U.decode(decoder, path, guidance=3.0, noise=noise.contiguous())
vlmlib.show_images(torch.cat([a[None], walk, b[None]]),
                   ["start"] + [f"{f:.2f}" for f in fractions] + ["end"], ncols=9, size=1.3);
""")

md(r"""
**unCLIP against the direct model.** The paper reports that going through a prior gives more
diverse images at similar fidelity. Below, one-shape prompts (faithfulness) and open prompts such
as "a red shape" (diversity), for the diffusion prior, the regression prior (one z_i per text),
no prior (z_t given to the decoder as if it were z_i), and the Imagen-style model with the
language model.
""")

code(r"""
n_cmp = settings.pick(cpu=100, gpu=400)
prompts, specs_one = T.prompt_sets(n_cmp, seed=4100)["one_seen"]
open_prompts = [T.OPEN_PROMPTS[i % len(T.OPEN_PROMPTS)] for i in range(n_cmp)]
groups = [T.OPEN_PROMPTS.index(p) for p in open_prompts]
makers = {"unCLIP, diffusion prior": lambda ps, s: U.generate(ps, prior, decoder, clip_model, 3.0, seed=s),
          "unCLIP, regression prior": lambda ps, s: U.generate(ps, regression, decoder, clip_model, 3.0,
                                                               seed=s),
          "unCLIP, no prior (z_t)": lambda ps, s: U.generate(ps, None, decoder, clip_model, 3.0, seed=s),
          f"Imagen-style, {MAIN} encoder": lambda ps, s: pipes[MAIN](ps, guidance_scale=BEST, seed=s)}
rows_u = {}
for name, make in makers.items():
    faith = T.score_images(make(prompts, 0), prompts, specs_one)
    opened = make(open_prompts, 1)
    read, valid = judge.read_scenes(opened), (judge.validity(opened) > 0.5).tolist()
    rows_u[name] = {"faithful": faith["faithful"], "colour": faith["colour"], "kind": faith["kind"],
                    "position": faith["position"], "diversity": T.diversity(read, valid, groups)}
vlmlib.table(rows_u, {k: "{:.1%}" for k in ("faithful", "colour", "kind", "position")}
             | {"diversity": "{:.3f}"}, first_column=f"{n_cmp} + {n_cmp} prompts each")
""")

code(r"""
d, r, z0, im = (rows_u[k] for k in makers)
Markdown(f"In this run the diffusion prior's images followed one-shape prompts {d['faithful']:.0%} "
         f"of the time (colour {d['colour']:.0%}, kind {d['kind']:.0%}, position "
         f"{d['position']:.0%}), the regression prior's {r['faithful']:.0%}, the decoder fed z_t "
         f"itself {z0['faithful']:.0%}, and the Imagen-style model {im['faithful']:.0%}. On open "
         f"prompts the diversity was {d['diversity']:.2f}, {r['diversity']:.2f}, "
         f"{z0['diversity']:.2f} and {im['diversity']:.2f}. CLIP's image embedding keeps what "
         "CLIP was trained to match with captions; what the decoder must redraw from it is the "
         "measure of how much that is (the decoder's redraw score above).")
""", ["hide-input"])

md(r"""
## Saving and loading, the `diffusers` way

The shipped model is a folder a `diffusers` user would recognise: the UNet and the scheduler are
saved with `save_pretrained` and loaded with `from_pretrained`; beside them, the frozen text
encoder (or, for the language model, the checksum of the one in `vlmlib`) and a record of how it
was made and what it scored. The pipeline is called like a `diffusers` pipeline.
""")

code(r"""
import tempfile

from diffusers import UNet2DConditionModel

folder = T.shipped_folder(f"t2i-{MAIN}")
for p in sorted(folder.rglob("*")):
    if p.is_file():
        print(f"{str(p.relative_to(folder)):<45} {p.stat().st_size / 1e3:8.1f} kB")
print(type(UNet2DConditionModel.from_pretrained(folder / "unet", low_cpu_mem_usage=False)).__name__,
      "loads with from_pretrained")
with tempfile.TemporaryDirectory() as tmp:
    pipes[MAIN].save_pretrained(tmp)
    again = T.TextToImagePipeline.from_pretrained(tmp)
    a = again("a large blue circle in the centre", guidance_scale=BEST, num_inference_steps=10, seed=0)
    b = pipes[MAIN]("a large blue circle in the centre", guidance_scale=BEST, num_inference_steps=10,
                    seed=0)
print("saved and loaded again: largest difference", (a - b).abs().max().item())
assert torch.allclose(a, b, atol=1e-5)
""")

md(r"""
## The real thing (optional, needs the internet)

The same recipe at scale: a real text-to-image pipeline from the Hugging Face Hub, called the way
our small pipeline is called. Offline, the cell says so in one line and the chapter goes on.
""")

code(r"""
from vlmlib import hub

try:
    real = hub.load_text2image_pipeline()
except Exception as err:   # offline, or the Hub is unreachable
    real = None
    why = type(err).__name__
    print(f"Skipping the real text-to-image model: it could not be loaded ({why}).")
if real is not None:
    pics = hub.generate_real(real, ["a red circle to the left of a blue square, flat colours",
                                    "a photograph of an astronaut riding a horse"], seed=0)
    vlmlib.show_images(pics, ["a red circle to the left of a blue square",
                              "an astronaut riding a horse"], ncols=2, size=4);
""")

md(r"""
## Summary

- A text-to-image model is chapter 5's diffusion model with a sentence for a label. Imagen keeps
  the text encoder **frozen** and lets the UNet read its token states through **cross-attention**
  (softmax(QKᵀ/√d)V with queries from the image, keys and values from the text), and adds the
  pooled text vector to the timestep embedding.
- Which encoder matters: the comparison above puts CLIP's text tower against a small language model
  trained on text alone, and the encoder's effect beside the effect of the UNet's size, on one- and
  two-shape prompts never seen in training.
- Classifier-free guidance (prompt dropped 10% of the time in training) trades diversity and
  fidelity for faithfulness as w grows. The book's w is `diffusers`' `guidance_scale` and Imagen's
  w; Ho and Salimans' w′ = w − 1.
- At high w, static clipping of x̂₀ saturates images; Imagen's dynamic thresholding rescales by a
  percentile of |x̂₀| instead.
- DALL-E 2 goes through CLIP's image space: a prior (here a diffusion model over the embedding) and
  a decoder. The image embedding gives **variations** and **interpolations** for free.
- Every number above was measured by a judge that reads whole scenes, on prompts that include
  colour–kind pairs and colour pairings never seen in training.

**Exercises**: 6.1 cross-attention, 6.2 the guidance combination, 6.3 dynamic thresholding.
""")


def build(path):
    cells = []
    for i, (kind, text, tags) in enumerate(CELLS):
        lines = text.split("\n")
        source = [l + "\n" for l in lines[:-1]] + [lines[-1]]
        cell = {"cell_type": kind, "metadata": {}, "source": source, "id": f"c6{i:02d}"}
        if tags:
            cell["metadata"]["tags"] = tags
        if kind == "code":
            cell["execution_count"] = None
            cell["outputs"] = []
        cells.append(cell)
    nb = {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                      "name": "python3"},
                                       "language_info": {"name": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    with open(path, "w") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    build(sys.argv[1] if len(sys.argv) > 1 else "notebooks/06_text_to_image.ipynb")
