"""Text to 3D by score distillation sampling (DreamFusion, Poole et al., 2022), at ShapesWorld size.

Introduced in chapter 7. A small 3D scene, a voxel grid of density and colour (:class:`VoxelScene`),
is rendered from named viewpoints ("top", "front", "side") by alpha compositing (:func:`composite`).
Each view gets its own prompt ("a large red circle in the centre" from above, "a large red square
in the centre" from the front), and chapter 6's frozen text-to-image model says how each rendering
should change. The gradient of DreamFusion's Eq. 3,

    ∇θ L_SDS = E_{t,ε}[ w(t) (ε̂_φ(x_t; y, t) − ε) ∂x/∂θ ],   x_t = √ᾱ_t x + √(1−ᾱ_t) ε,

skips the UNet's Jacobian: the residual w(t)(ε̂ − ε) (:func:`sds_gradient`) is pushed back through
the renderer only (:func:`sds_loss_surrogate`). The UNet predicts x̂₀, so ε̂ is read from it
(:func:`predict_eps`). :func:`optimise` runs it; :func:`read_views` (the scene judge on each view)
and :func:`shape_iou` (the grid against a cylinder, a cube, a sphere, a cone) measure the result;
:func:`benchmark` counts how many seeds give a scene whose every view reads as its prompt.

Conventions (as :mod:`vlmlib.diffusion`): timestep indices k ∈ {0, …, T−1}; images in [−1, 1] when
they meet the diffusion model, in [0, 1] otherwise; guidance w as ``diffusers``' ``guidance_scale``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import checks
from . import diffusion as D
from .shapesworld import COLOUR_NAMES, KINDS, POSITION_PHRASES, SIZES

#: The named viewpoints that prompts are given for ("side": from the right).
VIEWS = ("top", "front", "side")
#: The camera on the other side of each named one: optimisation looks from either, as DreamFusion's
#: cameras circle the object (a shape in the centre reads the same from both sides).
OPPOSITE = {"top": "bottom", "front": "back", "side": "left"}
ALL_VIEWS = VIEWS + tuple(OPPOSITE.values())
IMAGE_SIZE = 32                      # the text-to-image model's images
GRID = 16                            # voxels per side; one voxel per pixel, the grid spans the centre 16 px
BACKGROUND = 0.12                    # ShapesWorld's dark background (its grey level is drawn from [0.04, 0.20])
#: The classic demonstration and a second one: view-dependent prompts in the training captions' wording.
DEMOS: dict[str, dict[str, str]] = {
    "cylinder": {"top": "a large red circle in the centre", "front": "a large red square in the centre",
                 "side": "a large red square in the centre"},
    "cone": {"top": "a large blue circle in the centre", "front": "a large blue triangle in the centre",
             "side": "a large blue triangle in the centre"},
}
#: The solid each demonstration asks for (what :func:`shape_iou` compares the grid with).
INTENDED = {"cylinder": "cylinder", "cone": "cone"}
SOLIDS = ("cylinder", "cube", "sphere", "cone")


@dataclass
class SDSConfig:
    """How a scene is optimised (the defaults are what the chapter runs)."""

    steps: int = 200
    lr: float = 0.05
    guidance: float = 20.0               # w of ε̃ = ε(x, "") + w·(ε(x, y) − ε(x, "")); DreamFusion used 100
    t_range: tuple = (0.02, 0.98)        # t ~ U(t_min·T, t_max·T), as DreamFusion and stable-dreamfusion
    weighting: str = "1-alpha_bar"       # w(t) = 1 − ᾱ_t (stable-dreamfusion's choice) or "1"
    both_sides: bool = True              # each step, each camera looks from its named side or the opposite one
    grid: int = GRID
    resolution: int = 8                  # the parameters' grid, trilinearly upsampled to ``grid`` voxels

    def __post_init__(self):
        self.steps = checks.integer(self.steps, "steps", minimum=1)
        self.lr = checks.number(self.lr, "lr", low=0.0, low_open=True)
        self.guidance = checks.number(self.guidance, "guidance", low=0.0)
        if not isinstance(self.t_range, (tuple, list)) or len(self.t_range) != 2:
            raise ValueError(f"t_range must be two fractions (t_min, t_max) of T, got {self.t_range!r}")
        lo, hi = (checks.number(v, "t_range", low=0.0, high=1.0) for v in self.t_range)
        if lo > hi:
            raise ValueError(f"t_range must have t_min ≤ t_max, got {self.t_range!r}")
        self.t_range = (lo, hi)
        self.weighting = checks.choice(self.weighting, "weighting", WEIGHTINGS)
        if not isinstance(self.both_sides, bool):
            raise TypeError(f"both_sides must be True or False, got {self.both_sides!r}")
        self.grid = checks.integer(self.grid, "grid", minimum=2, maximum=IMAGE_SIZE)
        self.resolution = checks.integer(self.resolution, "resolution", minimum=2, maximum=self.grid)

    def to_dict(self) -> dict:
        return asdict(self)


WEIGHTINGS = ("1-alpha_bar", "1")


# -- the 3D scene and its renderer -----------------------------------------------------------------
def composite(sigma: torch.Tensor, rgb: torch.Tensor, background: float = BACKGROUND,
              delta: float = 1.0) -> torch.Tensor:
    """Front-to-back alpha compositing along the last axis (NeRF's quadrature of the volume rendering
    integral): α_i = 1 − exp(−σ_i δ), T_i = Π_{j<i} (1 − α_j), colour = Σ_i T_i α_i c_i + T_N · background.

    ``sigma`` (..., N) holds densities ≥ 0 along each ray, nearest sample first; ``rgb`` (3, ..., N)
    the colours; returns (3, ...).
    """
    tau = sigma * delta                                           # optical depth of each sample
    trans = torch.exp(-(torch.cumsum(tau, -1) - tau))             # T_i = exp(−Σ_{j<i} σ_j δ) = Π_{j<i}(1 − α_j)
    weights = trans * (1 - torch.exp(-tau))                       # T_i α_i
    left = torch.exp(-tau.sum(-1))                                # light that passes every sample
    return (weights * rgb).sum(-1) + left * background


def _orient(x: torch.Tensor, view: str) -> torch.Tensor:
    """A grid (..., h, d, w) (h: height, 0 at the top; d: depth, 0 nearest the front camera; w: left to
    right as the front camera sees it) as (..., rows, columns, ray samples nearest first) for an upright
    camera looking from ``view`` (the top and bottom cameras have the back, resp. the front, up)."""
    if view == "front":                 # rays along d; rows = h, columns = w
        return x.movedim(-2, -1)
    if view == "back":                  # rays along −d; columns run along −w
        return x.movedim(-2, -1).flip(-1).flip(-2)
    if view == "top":                   # rays down along h; rows = d with the far side up; columns = w
        return x.movedim(-3, -1).flip(-3)
    if view == "bottom":                # rays up along −h; rows = d with the front up; columns = w
        return x.movedim(-3, -1).flip(-1)
    if view == "side":                  # from the right, rays along −w; rows = h, columns = d (front on the left)
        return x.flip(-1)
    return x.flip(-2)                   # left: rays along w; columns run along −d (front on the right)


class VoxelScene(nn.Module):
    """A voxel grid (G, G, G) of density σ = softplus(·) and colour c = sigmoid(·), indexed (h, d, w).

    Rendered orthographically (:meth:`render`), one voxel per pixel, into the centre G×G pixels of a
    32×32 ShapesWorld-like image on a dark background: the object sits in the centre cell. It starts
    as DreamFusion's does, with a soft density blob at the centre (here with grey colours and a little
    noise drawn from ``seed``)."""

    def __init__(self, grid: int = GRID, image_size: int = IMAGE_SIZE, background: float = BACKGROUND,
                 seed: int = 0, resolution: int | None = None, blob: float = 2.0, blob_radius: float = 0.4,
                 density_noise: float = 0.05, colour_noise: float = 0.5):
        super().__init__()
        self.grid = checks.integer(grid, "grid", minimum=2)
        self.resolution = self.grid if resolution is None else checks.integer(resolution, "resolution", minimum=2,
                                                                               maximum=self.grid)
        self.image_size = checks.integer(image_size, "image_size", minimum=self.grid)
        self.background = checks.number(background, "background", low=0.0, high=1.0)
        seed = checks.integer(seed, "seed", minimum=0)
        blob = checks.number(blob, "blob")
        blob_radius = checks.number(blob_radius, "blob_radius", low=0.0, low_open=True)
        density_noise = checks.number(density_noise, "density_noise", low=0.0)
        colour_noise = checks.number(colour_noise, "colour_noise", low=0.0)
        g = torch.Generator().manual_seed(seed)
        n = self.resolution
        c = (torch.arange(n) + 0.5) / n * 2 - 1                             # voxel centres in [−1, 1]
        h, d, w = torch.meshgrid(c, c, c, indexing="ij")
        r = (h ** 2 + d ** 2 + w ** 2).sqrt()
        density = blob * (1 - r / blob_radius) - 2.0                         # a blob, thin air elsewhere
        self.density_logit = nn.Parameter(density + density_noise * torch.randn(density.shape, generator=g))
        self.colour_logit = nn.Parameter(colour_noise * torch.randn((3, n, n, n), generator=g))

    def _full(self, x: torch.Tensor) -> torch.Tensor:
        """A (C, r, r, r) or (r, r, r) field at the parameters' resolution, trilinearly upsampled to the grid."""
        if self.resolution == self.grid:
            return x
        y = x if x.ndim == 4 else x[None]
        y = F.interpolate(y[None], size=(self.grid,) * 3, mode="trilinear", align_corners=False)[0]
        return y if x.ndim == 4 else y[0]

    def density(self) -> torch.Tensor:
        """σ (G, G, G), ≥ 0."""
        return F.softplus(self._full(self.density_logit))

    def colour(self) -> torch.Tensor:
        """c (3, G, G, G), in [0, 1]."""
        return torch.sigmoid(self._full(self.colour_logit))

    def render(self, view: str) -> torch.Tensor:
        """The image (3, 32, 32) in [0, 1] a camera looking from ``view`` (one of :data:`ALL_VIEWS`) sees."""
        view = checks.choice(view, "view", ALL_VIEWS)
        image = composite(_orient(self.density(), view), _orient(self.colour(), view), self.background)
        pad = self.image_size - self.grid
        return F.pad(image, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=self.background)

    def render_views(self, views: Sequence[str] = VIEWS) -> torch.Tensor:
        """The images (V, 3, 32, 32) of several views."""
        views = checks.text_list(views, "views")
        return torch.stack([self.render(v) for v in views])

    @classmethod
    def from_occupancy(cls, occupied: torch.Tensor, colour: Sequence[float], density: float = 20.0,
                       **kwargs) -> "VoxelScene":
        """A scene of one colour and density σ = ``density`` (opaque by default) where ``occupied``
        (G, G, G, bool) is True, empty elsewhere."""
        if not isinstance(occupied, torch.Tensor) or occupied.ndim != 3 or len(set(occupied.shape)) != 1:
            raise ValueError(f"occupied must be a (G, G, G) boolean tensor, got {checks._given(occupied)}")
        density = checks.number(density, "density", low=0.0, low_open=True)
        rgb = torch.as_tensor(colour, dtype=torch.float32)
        if rgb.shape != (3,) or not bool(((rgb > 0) & (rgb < 1)).all()):
            raise ValueError(f"colour must be three values in (0, 1), got {colour!r}")
        scene = cls(grid=occupied.shape[0], density_noise=0.0, colour_noise=0.0, **kwargs)
        if scene.resolution != scene.grid:
            raise ValueError("from_occupancy makes a scene at full resolution: leave resolution out")
        with torch.no_grad():
            logit = math.log(math.expm1(density))                       # softplus⁻¹: σ = density inside
            scene.density_logit.copy_(torch.where(occupied.bool(), torch.tensor(logit), torch.tensor(-20.0)))
            scene.colour_logit.copy_(torch.logit(rgb)[:, None, None, None].expand_as(scene.colour_logit))
        return scene


def solid(kind: str, grid: int = GRID, radius: float = 0.16 * IMAGE_SIZE,
          height: float = 2 * 0.86 * 0.16 * IMAGE_SIZE) -> torch.Tensor:
    """An upright solid (G, G, G, bool) at the grid's centre, sizes in voxels (= pixels).

    The defaults are ShapesWorld's "large" shape: a circle of radius 0.16·32 px and a square of side
    2·0.86·0.16·32 px. ``"cylinder"`` of that radius and height (a circle from above, a square-ish
    rectangle from the front); ``"cube"`` of side ``height``; ``"sphere"`` of the radius; ``"cone"`` of
    that base radius and height, apex up."""
    kind = checks.choice(kind, "kind", SOLIDS)
    grid = checks.integer(grid, "grid", minimum=2)
    radius = checks.number(radius, "radius", low=0.0, low_open=True)
    height = checks.number(height, "height", low=0.0, low_open=True)
    c = torch.arange(grid) + 0.5 - grid / 2
    h, d, w = torch.meshgrid(c, c, c, indexing="ij")
    rho = (d ** 2 + w ** 2).sqrt()
    inside_h = h.abs() <= height / 2
    if kind == "cylinder":
        return inside_h & (rho <= radius)
    if kind == "cube":
        return inside_h & (d.abs() <= height / 2) & (w.abs() <= height / 2)
    if kind == "sphere":
        return (h ** 2 + rho ** 2).sqrt() <= radius
    return inside_h & (rho <= radius * (h + height / 2) / height)      # h grows downwards: apex at the top


#: A voxel counts as matter when its opacity α = 1 − exp(−σ) is at least this: it visibly dims what is
#: behind it. Score distillation from albedo-only renderings leaves half-transparent "fog" as often as
#: solid matter (both render alike), so a solid-only threshold (0.5) would miss most of the object.
OCCUPANCY_THRESHOLD = 0.1


def occupancy(scene: VoxelScene, threshold: float = OCCUPANCY_THRESHOLD) -> torch.Tensor:
    """Voxels (G, G, G, bool) whose opacity α = 1 − exp(−σ) is at least ``threshold``."""
    if not isinstance(scene, VoxelScene):
        raise TypeError(f"scene must be a VoxelScene, got {type(scene).__name__}")
    threshold = checks.number(threshold, "threshold", low=0.0, high=1.0, low_open=True, high_open=True)
    with torch.no_grad():
        return (1 - torch.exp(-scene.density())) >= threshold


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """Intersection over union of two boolean grids."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
        raise ValueError("a and b must be boolean tensors of the same shape")
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else 0.0


def shape_iou(scene: VoxelScene, threshold: float = OCCUPANCY_THRESHOLD) -> dict[str, float]:
    """The occupancy IoU of the scene's grid with each reference solid of :func:`solid` (same size)."""
    occ = occupancy(scene, threshold)
    return {kind: iou(occ, solid(kind, scene.grid)) for kind in SOLIDS}


# -- score distillation ----------------------------------------------------------------------------
def sds_gradient(x: torch.Tensor, eps_hat: torch.Tensor, eps: torch.Tensor,
                 weight: torch.Tensor | float) -> torch.Tensor:
    """The SDS gradient with respect to the rendered images x (DreamFusion's Eq. 3 without ∂x/∂θ):

        ∇_x L_SDS = w(t) · (ε̂_φ(x_t; y, t) − ε).

    ``x``, ``eps_hat`` and ``eps`` are (B, C, H, W); ``weight`` is w(t), a number or one per image (B,).
    No Jacobian of the UNet appears: x's values are not needed, only its shape.
    """
    D._check_images(x, "x")
    for name, v in (("eps_hat", eps_hat), ("eps", eps)):
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            raise ValueError(f"{name} must be a tensor of x's shape {tuple(x.shape)}, got {D._describe(v)}")
    if isinstance(weight, torch.Tensor) and weight.ndim:
        if weight.shape != (len(x),):
            raise ValueError(f"weight must be a number or one per image, shape ({len(x)},), got {tuple(weight.shape)}")
        weight = D._bcast(weight, x)
    else:
        weight = checks.number(weight, "weight", low=0.0)
    return weight * (eps_hat - eps)


def sds_loss_surrogate(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """A loss whose gradient with respect to x is ``grad`` (the stop-gradient trick):

        L = ½ ‖x − sg(x − grad)‖²,   so   ∂L/∂x = x − (x − grad) = grad.

    ``loss.backward()`` then carries the SDS gradient through the renderer to the scene's parameters.
    """
    D._check_images(x, "x")
    if not isinstance(grad, torch.Tensor) or grad.shape != x.shape:
        raise ValueError(f"grad must be a tensor of x's shape {tuple(x.shape)}, got {D._describe(grad)}")
    target = (x - grad).detach()
    return 0.5 * ((x - target) ** 2).sum()


def sds_weight(alpha_bar: torch.Tensor, kind: str = "1-alpha_bar") -> torch.Tensor:
    """w(t) for the ᾱ_t of each image: 1 − ᾱ_t (DreamFusion's σ_t², stable-dreamfusion's choice) or 1."""
    kind = checks.choice(kind, "kind", WEIGHTINGS)
    return 1 - alpha_bar if kind == "1-alpha_bar" else torch.ones_like(alpha_bar)


@torch.no_grad()
def predict_eps(model, x_t: torch.Tensor, t: torch.Tensor, condition, guidance: float = 20.0,
                null=None) -> torch.Tensor:
    """The guided noise prediction ε̂ for noisy images ``x_t`` (B, 3, 32, 32) in [−1, 1] at indices ``t`` (B,).

    ``model`` is a :class:`~vlmlib.text2image.TextToImagePipeline` (``condition`` may then be a list of
    prompts; the empty prompt is its own ``null``) or a :class:`~vlmlib.text2image.TextToImage` (give
    ``condition`` and ``null`` as ``TextCondition``; ``null`` of one row is repeated). The two outputs
    are combined by classifier-free guidance, out_∅ + w·(out_y − out_∅) (:func:`vlmlib.diffusion.guide`),
    and turned into ε̂ = (x_t − √ᾱ_t x̂₀)/√(1 − ᾱ_t) when the model predicts x₀ (as chapter 6's does).
    Guiding x̂₀ or ε̂ is the same: ε̂ is an affine function of x̂₀ for a fixed x_t.
    """
    from .text2image import TextCondition, TextToImage, TextToImagePipeline

    if isinstance(model, TextToImagePipeline):
        if not isinstance(condition, TextCondition):
            prompts = checks.text_list(condition, "condition", length=len(x_t))
            condition = model.text_encoder.encode(prompts)
        null = model.text_encoder.encode([""]) if null is None else null
        model = model.unet
    if not isinstance(model, TextToImage):
        raise TypeError(f"model must be a TextToImagePipeline or a TextToImage, got {type(model).__name__}")
    if not isinstance(condition, TextCondition) or not isinstance(null, TextCondition):
        raise TypeError("condition and null must be TextConditions (text_encoder.encode(prompts)); "
                        "with a TextToImage give both")
    guidance = checks.number(guidance, "guidance", low=0.0)
    D._check_images(x_t, "x_t")
    t = D._check_t(t, len(x_t), model.config.T)
    device = next(model.parameters()).device
    x_t, t = x_t.to(device), t.to(device)
    condition = condition.to(device)
    if len(null) == 1:
        null = null[[0] * len(x_t)]
    null = null.to(device)
    if guidance == 1:
        out = model(x_t, t, condition)
    else:
        out_u, out_c = model(torch.cat([x_t, x_t]), torch.cat([t, t]), TextCondition.cat([null, condition])).chunk(2)
        out = D.guide(out_u, out_c, guidance)
    _, eps = D.to_x0_eps(out, t, x_t, model.schedule.alpha_bar.to(device), model.config.prediction_type)
    return eps


# -- optimising a scene ----------------------------------------------------------------------------
_PIPE: dict = {}


def load_pipeline(name: str = "t2i-clip"):
    """Chapter 6's shipped text-to-image pipeline (kept in memory after the first call)."""
    from .text2image import TextToImagePipeline, shipped_folder

    if name not in _PIPE:
        _PIPE[name] = TextToImagePipeline.from_pretrained(shipped_folder(name))
    return _PIPE[name]


def _check_prompts(prompts_by_view) -> dict[str, str]:
    if not isinstance(prompts_by_view, Mapping) or not prompts_by_view:
        raise TypeError(f"prompts_by_view must be a dict such as {{'top': 'a large red circle in the centre', "
                        f"'front': ...}}, got {checks._given(prompts_by_view)}")
    out = {}
    for view, prompt in prompts_by_view.items():
        view = checks.choice(view, "prompts_by_view key", VIEWS)
        if not isinstance(prompt, str) or not prompt.strip():
            raise TypeError(f"prompts_by_view[{view!r}] must be a non-empty prompt, got {checks._given(prompt)}")
        out[view] = prompt
    return out


def optimise(prompts_by_view: Mapping[str, str], steps: int = 200, seed: int = 0, guidance: float = 20.0,
             lr: float = 0.05, progress: bool = True, pipe=None, t_range: tuple = (0.02, 0.98),
             weighting: str = "1-alpha_bar", both_sides: bool = True, resolution: int = 8,
             grid: int = GRID, snapshots: int = 8) -> tuple[VoxelScene, dict]:
    """Score distillation of a :class:`VoxelScene` from view-dependent prompts.

    Each step renders every view of ``prompts_by_view`` (with ``both_sides``, each from its named side
    or, at random, the opposite one of :data:`OPPOSITE`, with the same prompt), draws one
    t ~ U(t_min·T, t_max·T) and one ε per view, asks the frozen model for ε̂ at
    x_t = √ᾱ_t x + √(1−ᾱ_t) ε (x: the rendering in [−1, 1]), and takes an Adam step along
    w(t)(ε̂ − ε) pushed through the renderer. ``pipe`` is chapter 6's pipeline
    (the shipped ``t2i-clip`` by default). Returns ``(scene, history)``; ``history`` holds ``"t"`` and
    ``"grad_norm"`` per step, ``"frames"`` (K, V, 3, 32, 32): the views at ``snapshots`` moments,
    ``"frame_steps"``, ``"views"`` and ``"seconds"``.
    """
    from .plotting import progress as progress_bar

    prompts_by_view = _check_prompts(prompts_by_view)
    config = SDSConfig(steps=steps, lr=lr, guidance=guidance, t_range=t_range, weighting=weighting,
                       both_sides=both_sides, resolution=resolution, grid=grid)
    seed = checks.integer(seed, "seed", minimum=0)
    snapshots = checks.integer(snapshots, "snapshots", minimum=1)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    pipe = load_pipeline() if pipe is None else pipe
    model = pipe.unet
    views = list(prompts_by_view)
    start = time.perf_counter()
    condition = pipe.text_encoder.encode([prompts_by_view[v] for v in views])
    null = pipe.text_encoder.encode([""])
    alpha_bar = model.schedule.alpha_bar
    T = len(alpha_bar)
    t_lo, t_hi = (min(max(round(f * T), 0), T - 1) for f in config.t_range)
    g = torch.Generator().manual_seed(seed)
    scene = VoxelScene(grid=config.grid, resolution=config.resolution, seed=seed)
    opt = torch.optim.Adam(scene.parameters(), lr=config.lr)
    frame_steps = sorted({round(i * config.steps / snapshots) for i in range(snapshots)} | {config.steps})
    history = {"t": [], "grad_norm": [], "frames": [], "frame_steps": frame_steps, "views": views}
    steps_iter = range(config.steps + 1)
    it = progress_bar(steps_iter, desc=f"score distillation, {config.steps} steps") if progress else steps_iter
    for step in it:
        if step in frame_steps:
            with torch.no_grad():
                history["frames"].append(scene.render_views(views))
        if step == config.steps:
            break
        cameras = views
        if config.both_sides:
            flip = (torch.rand(len(views), generator=g) < 0.5).tolist()
            cameras = [OPPOSITE[v] if f else v for v, f in zip(views, flip)]
        x = scene.render_views(cameras) * 2 - 1                              # (V, 3, 32, 32), the model's space
        t = torch.randint(t_lo, t_hi + 1, (len(views),), generator=g)
        eps = torch.randn(x.shape, generator=g)
        x_t = D.q_sample(x.detach(), t, eps, alpha_bar)
        eps_hat = predict_eps(model, x_t, t, condition, config.guidance, null)
        grad = sds_gradient(x, eps_hat, eps, sds_weight(alpha_bar[t], config.weighting))
        opt.zero_grad()
        sds_loss_surrogate(x, grad).backward()
        opt.step()
        history["t"].append(t.tolist())
        history["grad_norm"].append(grad.norm().item())
    history["frames"] = torch.stack(history["frames"])
    history["seconds"] = time.perf_counter() - start
    history["config"] = config.to_dict()
    return scene, history


#: Bumped whenever :func:`optimise` changes what it makes, so that cached scenes are made again.
CACHE_VERSION = 1


def optimise_cached(prompts_by_view: Mapping[str, str], seed: int = 0, pipe=None, snapshots: int = 8,
                    verbose: bool = True, **settings) -> tuple[VoxelScene, dict]:
    """:func:`optimise` through the artifact cache (``vlmlib.cached``): made once, then loaded.

    Keyed by the prompts, the seed, every setting (:class:`SDSConfig`, defaults filled in), the
    SHA-256 of the UNet's and the text encoder's weights and :data:`CACHE_VERSION`. ``settings`` are
    :func:`optimise`'s (``steps``, ``guidance``, ``lr``, ``t_range``, ...). The history's
    ``"seconds"`` is the time the optimisation took when it was made; ``"from_cache"`` says which.
    """
    from .cache import Artifact, cached

    prompts_by_view = _check_prompts(prompts_by_view)
    seed = checks.integer(seed, "seed", minimum=0)
    snapshots = checks.integer(snapshots, "snapshots", minimum=1)
    config = SDSConfig(**settings)
    pipe = load_pipeline() if pipe is None else pipe
    key = {"prompts": prompts_by_view, "seed": seed, "snapshots": snapshots, "config": config.to_dict(),
           "unet_sha256": D.weights_sha256(pipe.unet), "encoder_sha256": D.weights_sha256(pipe.text_encoder)
           if isinstance(pipe.text_encoder, nn.Module) else type(pipe.text_encoder).__name__,
           "version": CACHE_VERSION}
    key["config"]["t_range"] = list(config.t_range)

    def build() -> Artifact:
        scene, history = optimise(prompts_by_view, seed=seed, progress=verbose, pipe=pipe, snapshots=snapshots,
                                  **config.to_dict())
        tensors = {**{k: v.detach() for k, v in scene.state_dict().items()}, "frames": history["frames"]}
        metrics = {k: history[k] for k in ("t", "frame_steps", "views", "seconds")}
        return Artifact("sds-scene", key, tensors, metrics, {"grad_norm": history["grad_norm"]})

    art = cached("sds-scene", key, build, verbose=False)
    if verbose and art.from_cache:
        print(f"score distillation for {list(prompts_by_view)}, seed {seed} (loaded from the cache)")
    scene = VoxelScene(grid=config.grid, resolution=config.resolution, seed=seed)
    scene.load_state_dict({k: v for k, v in art.state_dict.items() if k != "frames"})
    history = {**art.metrics, "frames": art.state_dict["frames"], "grad_norm": art.history["grad_norm"],
               "config": config.to_dict(), "from_cache": art.from_cache}
    return scene, history


# -- measuring -------------------------------------------------------------------------------------
def prompt_spec(prompt: str) -> dict[str, str]:
    """What a one-shape prompt asks for, read from its words: some of colour, kind, size and position."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {checks._given(prompt)}")
    words = prompt.split()
    spec = {}
    for key, names in (("colour", COLOUR_NAMES), ("kind", KINDS), ("size", SIZES)):
        hit = [w for w in words if w in names]
        if hit:
            spec[key] = hit[0]
    for position, phrase in sorted(POSITION_PHRASES.items(), key=lambda kv: -len(kv[1])):
        if phrase in prompt:
            spec["position"] = position
            break
    if "colour" not in spec and "kind" not in spec:
        raise ValueError(f"prompt {prompt!r} names no colour and no kind of shape")
    return spec


def read_views(scene: VoxelScene, prompts_by_view: Mapping[str, str]) -> dict:
    """The scene judge's reading of each view against its prompt.

    Per view: ``"read"`` (the shapes it sees), ``"valid"`` (a whole ShapesWorld-like scene, p > 0.5),
    ``"faithful"`` (valid, exactly one shape, with the prompt's colour, kind and position; the size is
    reported apart as ``"size_right"``). ``"all_faithful"``: every view reads as its prompt.
    """
    from . import scene_judge as SJ

    if not isinstance(scene, VoxelScene):
        raise TypeError(f"scene must be a VoxelScene, got {type(scene).__name__}")
    prompts_by_view = _check_prompts(prompts_by_view)
    views = list(prompts_by_view)
    judge = SJ.load_scene_judge()[0]
    with torch.no_grad():
        images = scene.render_views(views).clamp(0, 1)
    scenes = judge.read_scenes(images)
    valid = (judge.validity(images) > 0.5).tolist()
    out = {}
    for view, read, ok in zip(views, scenes, valid):
        spec = prompt_spec(prompts_by_view[view])
        bar = {k: v for k, v in spec.items() if k != "size"}
        out[view] = {"prompt": prompts_by_view[view], "read": read, "valid": ok,
                     "faithful": bool(ok and SJ.faithful(read, bar)),
                     "size_right": "size" not in spec or (len(read) == 1 and read[0]["size"] == spec["size"])}
    out["all_faithful"] = all(out[v]["faithful"] for v in views)
    return out


#: The opacity thresholds at which :func:`benchmark` also reports the IoU: fog and matter (0.1), denser
#: (0.3), solid (0.5).
IOU_THRESHOLDS = (0.1, 0.3, 0.5)


def benchmark(n_seeds: int = 20, demos: Sequence[str] = ("cylinder",), first_seed: int = 0, progress: bool = True,
              pipe=None, **settings) -> dict:
    """Optimise ``n_seeds`` scenes (seeds ``first_seed``, ``first_seed + 1``, …) per demonstration of
    :data:`DEMOS` with :func:`optimise_cached` and ``settings`` (:class:`SDSConfig`'s), and measure each.

    Per demonstration: ``"all_views"`` (the fraction of runs whose every view reads as its prompt: the
    bar asks ≥ 0.8), ``"views"`` (each view's faithful rate), ``"iou"`` (the mean occupancy IoU with
    each solid of :data:`SOLIDS`; ``"iou_start"``: the same for the starting blob; ``"iou_by_threshold"``:
    at each opacity threshold of :data:`IOU_THRESHOLDS`), ``"seconds_per_run"``
    (as measured when each run was made) and ``"runs"`` (every run's readings).
    """
    n_seeds = checks.integer(n_seeds, "n_seeds", minimum=1)
    first_seed = checks.integer(first_seed, "first_seed", minimum=0)
    demos = [checks.choice(d, "demos", DEMOS) for d in checks.text_list(demos, "demos")]
    config = SDSConfig(**settings)
    pipe = load_pipeline() if pipe is None else pipe
    result = {"n_seeds": n_seeds, "first_seed": first_seed, "config": config.to_dict(), "demos": {}}
    for name in demos:
        prompts = DEMOS[name]
        runs = []
        for seed in range(first_seed, first_seed + n_seeds):
            scene, hist = optimise_cached(prompts, seed=seed, pipe=pipe, verbose=False, **settings)
            reading = read_views(scene, prompts)
            start = VoxelScene(grid=config.grid, resolution=config.resolution, seed=seed)
            runs.append({"seed": seed, "seconds": hist["seconds"], "all_faithful": reading["all_faithful"],
                         "views": {v: reading[v]["faithful"] for v in prompts},
                         "read": {v: reading[v]["read"] for v in prompts},
                         "iou": shape_iou(scene), "iou_start": shape_iou(start),
                         "iou_by_threshold": {f"{th:g}": shape_iou(scene, th) for th in IOU_THRESHOLDS}})
            if progress:
                print(f"{name}, seed {seed}: every view right: {reading['all_faithful']}; IoU with the "
                      f"{INTENDED[name]} {runs[-1]['iou'][INTENDED[name]]:.2f} ({hist['seconds']:.1f} s)", flush=True)
        result["demos"][name] = {
            "all_views": sum(r["all_faithful"] for r in runs) / n_seeds,
            "views": {v: sum(r["views"][v] for r in runs) / n_seeds for v in prompts},
            "iou": {k: sum(r["iou"][k] for r in runs) / n_seeds for k in SOLIDS},
            "iou_start": {k: sum(r["iou_start"][k] for r in runs) / n_seeds for k in SOLIDS},
            "iou_by_threshold": {f"{th:g}": {k: sum(r["iou_by_threshold"][f"{th:g}"][k] for r in runs) / n_seeds
                                             for k in SOLIDS} for th in IOU_THRESHOLDS},
            "seconds_per_run": sum(r["seconds"] for r in runs) / n_seeds,
            "runs": runs}
    return result
