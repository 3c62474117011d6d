"""Bad input to vlmlib's public functions gets a clear error (reliability review, requirement 1).

One table of bad calls across vit, clip, shapesworld, tokenizer, plotting, report and settings: each
must raise the stated exception type with a message that names the argument. Then the friendly
conversions (float64 and uint8 images, NumPy scalars and arrays) must give the float32 result.
"""

import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from vlmlib import clip as C
from vlmlib import plotting as P
from vlmlib import report as R
from vlmlib import settings as S
from vlmlib import shapesworld as W
from vlmlib import tokenizer as T
from vlmlib import vit as V
from vlmlib.shapesworld import Shape, ShapesData, ShapesWorld

matplotlib.use("Agg")

torch.manual_seed(0)
vit = V.ViT(V.ViTConfig()).eval()
small = C.CLIPConfig(patch_size=8, vision_dim=32, text_dim=32, embed_dim=16, vision_depth=1, text_depth=1)
clip = C.CLIP(small).eval()
world = ShapesWorld(seed=0)
data = world.sample(4, seed=0)
img = torch.rand(2, 3, 32, 32)
ids = C.tokenize(["a red circle", "a blue square"])
shape = data.shapes[0][0]
rng = np.random.default_rng(0)
nan_img = torch.full((1, 3, 32, 32), float("nan"))
mha = V.MultiHeadSelfAttention(16, 4)
block = V.Block(16, 4, 2)
q = torch.randn(2, 5, 8)
emb = lambda texts: torch.randn(len(texts), 4)   # noqa: E731

# (what is probed, the call, the exception it must raise, text its message must contain: the argument)
CASES = [
 # vit
 ("ViTConfig pos_embedding str", lambda: V.ViTConfig(pos_embedding="no"), TypeError, "pos_embedding"),
 ("ViTConfig pos_embedding int", lambda: V.ViTConfig(pos_embedding=0), TypeError, "pos_embedding"),
 ("ViTConfig dim float", lambda: V.ViTConfig(dim=64.0), TypeError, "ViTConfig.dim"),
 ("ViTConfig depth 0", lambda: V.ViTConfig(depth=0), ValueError, "ViTConfig.depth"),
 ("ViTConfig heads -1", lambda: V.ViTConfig(heads=-1), ValueError, "ViTConfig.heads"),
 ("ViTConfig image_size str", lambda: V.ViTConfig(image_size="32"), TypeError, "ViTConfig.image_size"),
 ("ViTConfig patch_size not dividing", lambda: V.ViTConfig(patch_size=5), ValueError, "patch_size"),
 ("ViTConfig heads not dividing", lambda: V.ViTConfig(dim=30, heads=4), ValueError, "heads"),
 ("ViTConfig unknown option", lambda: V.ViTConfig(layers=3), TypeError, "layers"),
 ("ViT not a config", lambda: V.ViT({"dim": 64}), TypeError, "config"),
 ("ViT list images", lambda: vit([[0.0]]), TypeError, "images"),
 ("ViT 3-D images", lambda: vit(torch.rand(3, 32, 32)), ValueError, "images"),
 ("ViT wrong size", lambda: vit(torch.rand(2, 3, 16, 16)), ValueError, "images"),
 ("ViT channels last", lambda: vit(torch.rand(2, 32, 32, 3)), ValueError, "images"),
 ("ViT empty batch", lambda: vit(torch.rand(0, 3, 32, 32)), ValueError, "images"),
 ("ViT NaN", lambda: vit(nan_img), ValueError, "images"),
 ("ViT int64 images", lambda: vit(torch.zeros(1, 3, 32, 32, dtype=torch.long)), TypeError, "images"),
 ("ViT bool images", lambda: vit(torch.zeros(1, 3, 32, 32, dtype=torch.bool)), TypeError, "images"),
 ("ViT.features NaN", lambda: vit.features(nan_img), ValueError, "images"),
 ("ViT.attention_maps before a forward pass", lambda: V.ViT(V.ViTConfig()).attention_maps(), RuntimeError, "run the ViT"),
 ("ViTClassifier classes 1", lambda: V.ViTClassifier(V.ViTConfig(), {"colour": 1}), ValueError, "classes"),
 ("ViTClassifier classes list", lambda: V.ViTClassifier(V.ViTConfig(), ["colour"]), TypeError, "classes"),
 ("ViTClassifier classes float", lambda: V.ViTClassifier(V.ViTConfig(), {"colour": 6.0}), ValueError, "classes"),
 ("patchify list", lambda: V.patchify([[1.0]], 2), TypeError, "images"),
 ("patchify 3-D", lambda: V.patchify(torch.rand(3, 8, 8), 2), ValueError, "images"),
 ("patchify P not dividing", lambda: V.patchify(torch.rand(1, 3, 8, 8), 3), ValueError, "patch_size"),
 ("patchify P float", lambda: V.patchify(torch.rand(1, 3, 8, 8), 2.0), TypeError, "patch_size"),
 ("patchify P zero", lambda: V.patchify(torch.rand(1, 3, 8, 8), 0), ValueError, "patch_size"),
 ("unpatchify 4-D", lambda: V.unpatchify(torch.rand(1, 3, 8, 8), 2), ValueError, "patches"),
 ("unpatchify not square", lambda: V.unpatchify(torch.rand(1, 5, 12), 2), ValueError, "patches"),
 ("unpatchify list", lambda: V.unpatchify([1.0], 2), TypeError, "patches"),
 ("unpatchify channels 0", lambda: V.unpatchify(torch.rand(1, 4, 12), 2, 0), ValueError, "channels"),
 ("PatchEmbedding dim 0", lambda: V.PatchEmbedding(4, 3, 0), ValueError, "dim"),
 ("PatchEmbedding bias str", lambda: V.PatchEmbedding(4, 3, 8, bias="yes"), TypeError, "bias"),
 ("PatchEmbedding wrong channels", lambda: V.PatchEmbedding(4, 3, 8)(torch.rand(1, 1, 8, 8)), ValueError, "images"),
 ("PatchEmbedding uint8 ok-check NaN", lambda: V.PatchEmbedding(4, 3, 8)(torch.full((1, 3, 8, 8), float("inf"))), ValueError, "images"),
 ("attention float mask wrong shape", lambda: V.scaled_dot_product_attention(q, q, q, torch.zeros(4, 4)), ValueError, "mask"),
 ("attention int mask", lambda: V.scaled_dot_product_attention(q, q, q, torch.ones(5, 5, dtype=torch.long)), TypeError, "mask"),
 ("attention list mask", lambda: V.scaled_dot_product_attention(q, q, q, [[True]]), TypeError, "mask"),
 ("attention d mismatch", lambda: V.scaled_dot_product_attention(q, torch.randn(2, 5, 4), q), ValueError, "q"),
 ("attention length mismatch", lambda: V.scaled_dot_product_attention(q, q, torch.randn(2, 4, 8)), ValueError, "v"),
 ("attention dtype mismatch", lambda: V.scaled_dot_product_attention(q, q.double(), q), TypeError, "dtype"),
 ("attention integer q", lambda: V.scaled_dot_product_attention(q.long(), q.long(), q.long()), ValueError, "q"),
 ("attention 1-D q", lambda: V.scaled_dot_product_attention(torch.randn(8), q, q), ValueError, "q"),
 ("attention list q", lambda: V.scaled_dot_product_attention([1.0], q, q), TypeError, "q"),
 ("MSA heads not dividing", lambda: V.MultiHeadSelfAttention(10, 3), ValueError, "heads"),
 ("MSA heads 0", lambda: V.MultiHeadSelfAttention(10, 0), ValueError, "heads"),
 ("MSA dim float", lambda: V.MultiHeadSelfAttention(10.0, 2), TypeError, "dim"),
 ("MSA wrong width", lambda: mha(torch.randn(2, 5, 8)), ValueError, "x"),
 ("MSA 2-D x", lambda: mha(torch.randn(5, 16)), ValueError, "x"),
 ("MSA float64 x", lambda: mha(torch.randn(2, 5, 16, dtype=torch.float64)), TypeError, "x"),
 ("MSA list x", lambda: mha([1.0]), TypeError, "x"),
 ("Block mlp_ratio 0", lambda: V.Block(16, 4, 0), ValueError, "mlp_ratio"),
 ("Block wrong width", lambda: block(torch.randn(2, 5, 8)), ValueError, "z"),
 ("MLP hidden 0", lambda: V.MLP(16, 0), ValueError, "hidden"),
 ("MLP wrong width", lambda: V.MLP(16, 8)(torch.randn(2, 8)), ValueError, "x"),
 # clip: configs and model
 ("CLIPConfig causal str", lambda: C.CLIPConfig(causal="yes"), TypeError, "causal"),
 ("CLIPConfig text_dim float", lambda: C.CLIPConfig(text_dim=64.5), TypeError, "CLIPConfig.text_dim"),
 ("CLIPConfig vision_heads not dividing", lambda: C.CLIPConfig(vision_dim=30), ValueError, "vision_heads"),
 ("CLIPConfig patch_size not dividing", lambda: C.CLIPConfig(patch_size=5), ValueError, "patch_size"),
 ("CLIPConfig eos outside vocab", lambda: C.CLIPConfig(eos_id=64), ValueError, "eos_id"),
 ("CLIPConfig pad == eos", lambda: C.CLIPConfig(pad_id=3), ValueError, "pad_id"),
 ("CLIPConfig max_length 1", lambda: C.CLIPConfig(max_length=1), ValueError, "max_length"),
 ("CLIPConfig unknown option", lambda: C.CLIPConfig(temperature=0.07), TypeError, "temperature"),
 ("CLIP not a config", lambda: C.CLIP(C.ViTConfig()), TypeError, "config"),
 ("encode_image NaN", lambda: clip.encode_image(nan_img), ValueError, "images"),
 ("encode_image wrong size", lambda: clip.encode_image(torch.rand(2, 3, 16, 16)), ValueError, "images"),
 ("encode_image list", lambda: clip.encode_image([0.5]), TypeError, "images"),
 ("encode_text float ids", lambda: clip.encode_text(ids.float()), ValueError, "input_ids"),
 ("encode_text bool ids", lambda: clip.encode_text(ids > 0), ValueError, "input_ids"),
 ("encode_text list", lambda: clip.encode_text([[2, 3]]), TypeError, "input_ids"),
 ("encode_text 1-D", lambda: clip.encode_text(ids[0]), ValueError, "input_ids"),
 ("encode_text empty", lambda: clip.encode_text(torch.zeros(0, 4, dtype=torch.long)), ValueError, "input_ids"),
 ("encode_text id out of vocab", lambda: clip.encode_text(torch.tensor([[2, 70, 3]])), ValueError, "input_ids"),
 ("encode_text negative id", lambda: clip.encode_text(torch.tensor([[2, -1, 3]])), ValueError, "input_ids"),
 ("encode_text no EOS", lambda: clip.encode_text(torch.tensor([[2, 5, 6]])), ValueError, "EOS"),
 ("encode_text too long", lambda: clip.encode_text(torch.full((1, 17), 3)), ValueError, "max_length"),
 ("CLIP forward NaN", lambda: clip(nan_img, ids[:1]), ValueError, "images"),
 ("clamp_logit_scale_ NaN", lambda: clip.clamp_logit_scale_(float("nan")), ValueError, "max_value"),
 ("clamp_logit_scale_ str", lambda: clip.clamp_logit_scale_("100"), TypeError, "max_value"),
 # losses
 ("clip_loss not square", lambda: C.clip_loss(torch.zeros(3, 4)), ValueError, "logits"),
 ("clip_loss empty", lambda: C.clip_loss(torch.zeros(0, 0)), ValueError, "logits"),
 ("clip_loss int", lambda: C.clip_loss(torch.zeros(2, 2, dtype=torch.long)), ValueError, "logits"),
 ("clip_loss list", lambda: C.clip_loss([[1.0]]), TypeError, "logits"),
 ("siglip_loss vector bias", lambda: C.siglip_loss(torch.zeros(4, 4), torch.zeros(4)), ValueError, "bias"),
 ("siglip_loss str bias", lambda: C.siglip_loss(torch.zeros(4, 4), "-10"), TypeError, "bias"),
 ("siglip_loss NaN bias", lambda: C.siglip_loss(torch.zeros(4, 4), float("nan")), ValueError, "bias"),
 ("siglip_loss int tensor bias", lambda: C.siglip_loss(torch.zeros(4, 4), torch.tensor(1)), ValueError, "bias"),
 # tokenize
 ("tokenize max_length 2", lambda: C.tokenize(["a red circle"], max_length=2), ValueError, "max_length"),
 ("tokenize too long caption", lambda: C.tokenize(["a large red circle at the top left"], max_length=8), ValueError, "max_length"),
 ("tokenize max_length 0", lambda: C.tokenize(["a"], max_length=0), ValueError, "max_length"),
 ("tokenize max_length float", lambda: C.tokenize(["a"], max_length=16.0), TypeError, "max_length"),
 ("tokenize a string", lambda: C.tokenize("a red circle"), TypeError, "texts"),
 ("tokenize empty list", lambda: C.tokenize([]), ValueError, "texts"),
 ("tokenize non-string item", lambda: C.tokenize(["a", 3]), TypeError, "texts"),
 ("tokenize unknown word", lambda: C.tokenize(["a red elephant"]), ValueError, "elephant"),
 ("tokenize None", lambda: C.tokenize(None), TypeError, "texts"),
 # embedding helpers and zero-shot
 ("embed_texts not a CLIP", lambda: C.embed_texts(vit, ["a red circle"]), TypeError, "model"),
 ("embed_texts batch_size 0", lambda: C.embed_texts(clip, ["a red circle"], batch_size=0), ValueError, "batch_size"),
 ("embed_texts a string", lambda: C.embed_texts(clip, "a red circle"), TypeError, "texts"),
 ("embed_images NaN", lambda: C.embed_images(clip, nan_img), ValueError, "images"),
 ("embed_images batch_size float", lambda: C.embed_images(clip, img, batch_size=2.5), TypeError, "batch_size"),
 ("embed_images numpy channels-last", lambda: C.embed_images(clip, data.images), ValueError, "channels-last"),
 ("zero_shot_classifier not callable", lambda: C.zero_shot_classifier("embed", ["red"], ["a {}"]), TypeError, "embed"),
 ("zero_shot_classifier classnames str", lambda: C.zero_shot_classifier(emb, "red", ["a {}"]), ValueError, "classnames"),
 ("zero_shot_classifier templates str", lambda: C.zero_shot_classifier(emb, ["red"], "a {}"), ValueError, "templates"),
 ("zero_shot_classifier no braces", lambda: C.zero_shot_classifier(emb, ["red"], ["a red"]), ValueError, "template"),
 ("zero_shot_classifier empty classnames", lambda: C.zero_shot_classifier(emb, [], ["a {}"]), ValueError, "classnames"),
 ("zero_shot_classifier bad embed output", lambda: C.zero_shot_classifier(lambda t: torch.ones(1, 4), ["red", "blue"], ["a {}"]), ValueError, "embed"),
 ("zero_shot_classifier int classname", lambda: C.zero_shot_classifier(emb, [1], ["a {}"]), TypeError, "classnames"),
 ("zero_shot_predict mismatch", lambda: C.zero_shot_predict(torch.ones(2, 3), torch.ones(2, 4)), ValueError, "classifier"),
 ("zero_shot_predict list", lambda: C.zero_shot_predict([[1.0]], torch.ones(2, 4)), TypeError, "image_embeddings"),
 ("recall_at_k k float", lambda: C.recall_at_k(torch.zeros(3, 3), 1.5), TypeError, "k"),
 ("recall_at_k k too big", lambda: C.recall_at_k(torch.zeros(3, 3), 4), ValueError, "k"),
 ("recall_at_k NaN", lambda: C.recall_at_k(torch.full((2, 2), float("nan")), 1), ValueError, "similarity"),
 ("recall_at_k targets out of range", lambda: C.recall_at_k(torch.zeros(2, 3), 1, targets=torch.tensor([0, 3])), ValueError, "targets"),
 ("recall_at_k targets float", lambda: C.recall_at_k(torch.zeros(2, 3), 1, targets=torch.tensor([0.0, 1.0])), TypeError, "targets"),
 ("recall_at_k targets wrong length", lambda: C.recall_at_k(torch.zeros(2, 3), 1, targets=[0]), ValueError, "targets"),
 ("recall_at_k list", lambda: C.recall_at_k([[1.0]], 1), TypeError, "similarity"),
 ("attribute_templates unknown", lambda: C.attribute_templates("shape"), ValueError, "attribute"),
 ("attribute_classnames unknown", lambda: C.attribute_classnames("colours"), ValueError, "attribute"),
 ("zero_shot_accuracy attributes str", lambda: C.zero_shot_accuracy(clip, img, data.labels, attributes="colour"), TypeError, "attributes"),
 ("zero_shot_accuracy unknown attribute", lambda: C.zero_shot_accuracy(clip, img, data.labels, attributes=["shape"]), ValueError, "attributes"),
 ("zero_shot_accuracy labels wrong length", lambda: C.zero_shot_accuracy(clip, img, data.labels, attributes=["colour"]), ValueError, "labels"),
 ("zero_shot_accuracy labels missing", lambda: C.zero_shot_accuracy(clip, img, {}, attributes=["colour"]), ValueError, "labels"),
 ("partial_caption not a Shape", lambda: C.partial_caption("a red circle", rng), TypeError, "shape"),
 ("partial_caption seed as rng", lambda: C.partial_caption(shape, 0), TypeError, "rng"),
 ("partial_caption colour str", lambda: C.partial_caption(shape, rng, colour="no"), TypeError, "colour"),
 # Recipe and training entry points
 ("Recipe unknown loss", lambda: C.Recipe(loss="triplet"), ValueError, "Recipe.loss"),
 ("Recipe steps 0", lambda: C.Recipe(steps=0), ValueError, "Recipe.steps"),
 ("Recipe batch_size 1", lambda: C.Recipe(batch_size=1), ValueError, "Recipe.batch_size"),
 ("Recipe lr 0", lambda: C.Recipe(lr=0), ValueError, "Recipe.lr"),
 ("Recipe lr str", lambda: C.Recipe(lr="2e-3"), TypeError, "Recipe.lr"),
 ("Recipe p_grey > 1", lambda: C.Recipe(p_grey=1.5), ValueError, "Recipe.p_grey"),
 ("Recipe hard_negatives 5", lambda: C.Recipe(hard_negatives=5), ValueError, "Recipe.hard_negatives"),
 ("Recipe siglip_bias NaN", lambda: C.Recipe(loss="siglip", siglip_bias=float("nan")), ValueError, "Recipe.siglip_bias"),
 ("Recipe unknown option", lambda: C.Recipe(epochs=3), TypeError, "epochs"),
 ("CaptionedPool not a world", lambda: C.CaptionedPool("world", 10, 0.5, 0.5, 0), TypeError, "world"),
 ("CaptionedPool n 0", lambda: C.CaptionedPool(world, 0, 0.5, 0.5, 0), ValueError, "n"),
 ("CaptionedPool p_partial 2", lambda: C.CaptionedPool(world, 10, 2, 0.5, 0), ValueError, "p_partial"),
 ("CaptionedPool hard_negatives 0", lambda: C.CaptionedPool(world, 10, 0.5, 0.5, 0, hard_negatives=0), ValueError, "hard_negatives"),
 ("train_clip recipe dict", lambda: C.train_clip(small, {"steps": 1}), TypeError, "recipe"),
 ("build_clip config dict", lambda: C.build_clip({}, C.Recipe()), TypeError, "config"),
 ("default_settings unknown budget", lambda: C.default_settings("tpu"), ValueError, "budget"),
 ("load_clip unknown budget", lambda: C.load_clip("tpu"), ValueError, "budget"),
 ("load_hf_clip int", lambda: C.load_hf_clip(3), TypeError, "name_or_path"),
 ("load_hf_clip empty", lambda: C.load_hf_clip(""), ValueError, "name_or_path"),
 ("hf_zero_shot not a model", lambda: C.hf_zero_shot(clip, img, ids), TypeError, "model"),
 # shapesworld
 ("ShapesWorld held_out str", lambda: ShapesWorld(held_out="red"), TypeError, "held_out"),
 ("ShapesWorld held_out flat pair", lambda: ShapesWorld(held_out=("red", "circle")), ValueError, "held_out"),
 ("ShapesWorld held_out triple", lambda: ShapesWorld(held_out=[("red", "circle", "x")]), ValueError, "held_out"),
 ("ShapesWorld held_out unknown colour", lambda: ShapesWorld(held_out=[("pink", "circle")]), ValueError, "colour"),
 ("ShapesWorld held_out int", lambda: ShapesWorld(held_out=3), TypeError, "held_out"),
 ("ShapesWorld image_size 8", lambda: ShapesWorld(image_size=8), ValueError, "image_size"),
 ("ShapesWorld image_size float", lambda: ShapesWorld(image_size=32.0), ValueError, "image_size"),
 ("ShapesWorld max_shapes True", lambda: ShapesWorld(max_shapes=True), ValueError, "max_shapes"),
 ("ShapesWorld max_shapes 5", lambda: ShapesWorld(max_shapes=5), ValueError, "max_shapes"),
 ("ShapesWorld noise NaN", lambda: ShapesWorld(noise=float("nan")), ValueError, "noise"),
 ("ShapesWorld noise str", lambda: ShapesWorld(noise="0.1"), ValueError, "noise"),
 ("ShapesWorld seed -1", lambda: ShapesWorld(seed=-1), ValueError, "seed"),
 ("ShapesWorld seed float", lambda: ShapesWorld(seed=0.5), TypeError, "seed"),
 ("sample n -1", lambda: world.sample(-1), ValueError, "n"),
 ("sample n float", lambda: world.sample(2.5), ValueError, "n"),
 ("sample n str", lambda: world.sample("10"), ValueError, "n"),
 ("sample unknown split", lambda: world.sample(2, "val"), ValueError, "split"),
 ("sample unknown captions", lambda: world.sample(2, captions="long"), ValueError, "captions"),
 ("sample seed -1", lambda: world.sample(2, seed=-1), ValueError, "seed"),
 ("combos unknown split", lambda: world.combos("validation"), ValueError, "split"),
 ("is_held_out unknown colour", lambda: world.is_held_out("pink", "circle"), ValueError, "colour"),
 ("is_held_out unknown kind", lambda: world.is_held_out("red", "star"), ValueError, "kind"),
 ("position_name outside", lambda: W.position_name(32, 0, 32), ValueError, "(x, y)"),
 ("position_name NaN", lambda: W.position_name(float("nan"), 0, 32), ValueError, "x"),
 ("position_name str", lambda: W.position_name("1", 0, 32), TypeError, "x"),
 ("position_name image_size 0", lambda: W.position_name(1, 1, 0), ValueError, "image_size"),
 ("caption one Shape", lambda: W.caption(shape), TypeError, "shapes"),
 ("caption empty", lambda: W.caption([]), ValueError, "shape"),
 ("caption unknown style", lambda: W.caption([shape], "long"), ValueError, "style"),
 ("caption strings", lambda: W.caption(["a red circle"]), TypeError, "shapes"),
 ("varied_caption seed as rng", lambda: W.varied_caption([shape], 0), TypeError, "rng"),
 ("varied_caption empty", lambda: W.varied_caption([], rng), ValueError, "shapes"),
 ("questions empty", lambda: W.questions([]), ValueError, "shapes"),
 ("questions five shapes", lambda: W.questions([shape] * 5), ValueError, "shapes"),
 ("questions one Shape", lambda: W.questions(shape), TypeError, "shapes"),
 ("Shape unknown colour", lambda: Shape("pink", "circle", "small", "top", 1.0, 1.0, 2.0), ValueError, "Shape.colour"),
 ("Shape unknown position", lambda: Shape("red", "circle", "small", "middle", 1.0, 1.0, 2.0), ValueError, "Shape.position"),
 ("Shape radius 0", lambda: Shape("red", "circle", "small", "top", 1.0, 1.0, 0.0), ValueError, "Shape.radius"),
 ("Shape x str", lambda: Shape("red", "circle", "small", "top", "1", 1.0, 2.0), TypeError, "Shape.x"),
 ("ShapesData wrong layout", lambda: ShapesData(np.zeros((2, 3, 8, 8), np.float32), [[], []], {}, "train"), ValueError, "ShapesData.images"),
 ("ShapesData shapes length", lambda: ShapesData(np.zeros((2, 8, 8, 3), np.float32), [[]], {}, "train"), ValueError, "ShapesData.shapes"),
 ("ShapesData.tensor unknown device", lambda: data.tensor("gpu"), ValueError, "device"),
 ("ShapesData.label_tensors device int", lambda: data.label_tensors(3), TypeError, "device"),
 ("train_clip unknown device", lambda: C.train_clip(small, C.Recipe(), device="tpu"), ValueError, "device"),
 ("load_clip device int", lambda: C.load_clip(device=1), TypeError, "device"),
 ("ShapesData unknown split", lambda: ShapesData(np.zeros((1, 8, 8, 3), np.float32), [[]], {}, "val"), ValueError, "split"),
 # tokenizer
 ("shapes_tokenizer a string", lambda: T.shapes_tokenizer("hello"), TypeError, "extra_words"),
 ("shapes_tokenizer two words", lambda: T.shapes_tokenizer(("two words",)), ValueError, "extra_words"),
 ("shapes_tokenizer upper case", lambda: T.shapes_tokenizer(("Hello",)), ValueError, "extra_words"),
 ("shapes_tokenizer punctuation", lambda: T.shapes_tokenizer(("circle?",)), ValueError, "extra_words"),
 ("shapes_tokenizer int", lambda: T.shapes_tokenizer((3,)), TypeError, "extra_words"),
 # plotting
 ("show_images captions str", lambda: P.show_images(img, captions="ab"), TypeError, "captions"),
 ("show_images captions ints", lambda: P.show_images(img, captions=[1, 2]), TypeError, "captions"),
 ("show_images captions count", lambda: P.show_images(img, captions=["a"]), ValueError, "captions"),
 ("show_images ncols 0", lambda: P.show_images(img, ncols=0), ValueError, "ncols"),
 ("show_images ncols float", lambda: P.show_images(img, ncols=2.0), TypeError, "ncols"),
 ("show_images size -1", lambda: P.show_images(img, size=-1), ValueError, "size"),
 ("show_images wrap 0", lambda: P.show_images(img, ["a", "b"], wrap=0), ValueError, "wrap"),
 ("show_images empty", lambda: P.show_images([]), ValueError, "image"),
 ("show_images a number", lambda: P.show_images(3), TypeError, "images"),
 ("show_images empty image", lambda: P.show_images([np.zeros((0, 0, 3))]), ValueError, "image"),
 ("to_display batch", lambda: P.to_display(torch.rand(1, 3, 8, 8)), ValueError, "batch"),
 ("to_display str", lambda: P.to_display("image.png"), TypeError, "image"),
 ("plot_curves list", lambda: P.plot_curves([1, 2, 3]), TypeError, "history"),
 ("plot_curves empty", lambda: P.plot_curves({}), ValueError, "history"),
 ("plot_curves strings", lambda: P.plot_curves({"loss": ["a", "b"]}), TypeError, "history['loss']"),
 ("plot_curves smooth 0", lambda: P.plot_curves({"loss": [1.0, 2.0]}, smooth=0), ValueError, "smooth"),
 ("plot_curves unknown logy", lambda: P.plot_curves({"loss": [1.0, 2.0]}, logy=("accuracy",)), ValueError, "logy"),
 ("plot_curves 2-D", lambda: P.plot_curves({"loss": [[1.0, 2.0]]}), ValueError, "history['loss']"),
 ("bar_chart labels str", lambda: P.bar_chart("ab", [0.1, 0.2]), TypeError, "labels"),
 ("bar_chart count", lambda: P.bar_chart(["a"], [0.1, 0.2]), ValueError, "labels"),
 ("bar_chart NaN", lambda: P.bar_chart(["a"], [float("nan")]), ValueError, "values"),
 ("bar_chart strings", lambda: P.bar_chart(["a"], ["high"]), TypeError, "values"),
 ("bar_chart highlight -1", lambda: P.bar_chart(["a", "b"], [0.1, 0.2], highlight=-1), ValueError, "highlight"),
 ("bar_chart highlight 2", lambda: P.bar_chart(["a", "b"], [0.1, 0.2], highlight=2), ValueError, "highlight"),
 ("bar_chart empty", lambda: P.bar_chart([], []), ValueError, "bar"),
 ("heatmap labels mismatch", lambda: P.heatmap(np.zeros((2, 3)), ["a", "b"], ["x"]), ValueError, "labels"),
 ("heatmap 1-D", lambda: P.heatmap(np.zeros(3), ["a"], ["x"]), ValueError, "matrix"),
 ("heatmap empty", lambda: P.heatmap(np.zeros((0, 0)), [], []), ValueError, "matrix"),
 ("heatmap strings", lambda: P.heatmap([["a"]], ["r"], ["c"]), TypeError, "matrix"),
 ("heatmap bad fmt", lambda: P.heatmap(np.zeros((1, 1)), ["r"], ["c"], fmt="{:d}"), ValueError, "fmt"),
 ("heatmap fmt not str", lambda: P.heatmap(np.zeros((1, 1)), ["r"], ["c"], fmt=2), TypeError, "fmt"),
 ("heatmap row_labels str", lambda: P.heatmap(np.zeros((2, 1)), "ab", ["c"]), TypeError, "row_labels"),
 ("heatmap vmin NaN", lambda: P.heatmap(np.zeros((1, 1)), ["r"], ["c"], vmin=float("nan")), ValueError, "vmin"),
 ("table empty", lambda: P.table({}), TypeError, "rows"),
 ("table unknown format column", lambda: P.table({"a": {"x": 1}}, formats={"y": "{}"}), ValueError, "formats"),
 ("table bad format", lambda: P.table({"a": {"x": 1.5}}, formats={"x": "{:d}"}), ValueError, "formats['x']"),
 ("animation_html figure", lambda: P.animation_html(None), TypeError, "Animation"),
 ("progress total negative", lambda: P.progress(range(3), total=-1), ValueError, "total"),
 ("progress desc not str", lambda: P.progress(range(3), desc=3), TypeError, "desc"),
 ("progress a number", lambda: P.progress(5), TypeError, "iterable"),
 # report
 ("record empty name", lambda: R.record("", 1.0), ValueError, "name"),
 ("record str value", lambda: R.record("x", "high"), TypeError, "value"),
 ("record list value", lambda: R.record("x", [1.0, 2.0]), TypeError, "value"),
 ("record unit not str", lambda: R.record("x", 1.0, unit=3), TypeError, "unit"),
 ("expect no bar", lambda: R.expect("x", 1.0), ValueError, "at_least"),
 ("expect str value", lambda: R.expect("x", "high", at_least=1), TypeError, "value"),
 ("expect NaN bar", lambda: R.expect("x", 1.0, at_least=float("nan")), ValueError, "at_least"),
 ("expect str bar", lambda: R.expect("x", 1.0, at_most="2"), TypeError, "at_most"),
 ("expect crossed bars", lambda: R.expect("x", 1.0, at_least=2, at_most=1), ValueError, "at_least"),
 ("expect name not str", lambda: R.expect(3, 1.0, at_least=0), ValueError, "name"),
 ("stopwatch name not str", lambda: R.stopwatch(None).__enter__(), ValueError, "name"),
 # settings
 ("seed_everything -1", lambda: S.seed_everything(-1), ValueError, "seed"),
 ("seed_everything float", lambda: S.seed_everything(1.5), TypeError, "seed"),
 ("seed_everything str", lambda: S.seed_everything("0"), TypeError, "seed"),
 ("setup unknown device", lambda: S.setup(device="gpu", verbose=False), ValueError, "device"),
 ("setup device int", lambda: S.setup(device=0, verbose=False), TypeError, "device"),
 ("setup verbose str", lambda: S.setup(verbose="no"), TypeError, "verbose"),
 ("budget_for unknown device", lambda: S.budget_for("tpu"), ValueError, "device"),
 ("RunSettings unknown budget", lambda: S.RunSettings(0, torch.device("cpu"), "huge"), ValueError, "budget"),
 ("RunSettings seed -1", lambda: S.RunSettings(-1, torch.device("cpu"), "cpu"), ValueError, "seed"),
]

@pytest.mark.parametrize("call, error, names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(call, error, names):
    try:
        with pytest.raises(error) as info:
            call()
    finally:
        plt.close("all")
    assert type(info.value) is error                       # not a subclass raised deep inside torch or NumPy
    assert names in str(info.value), f"the message does not name {names!r}: {info.value}"


def test_the_table_covers_every_module_and_its_ids_are_unique():
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names)) and len(names) >= 255


# -- friendly conversions: the same result as the float32 (or plain Python) input --------------------
def test_clip_encodes_float64_uint8_and_numpy_images_as_their_float32_version():
    x = torch.rand(3, 3, 32, 32)
    pixels = (x * 255).round().to(torch.uint8)
    with torch.no_grad():
        ref = clip.encode_image(x)
        assert torch.equal(clip.encode_image(x.double()), ref)
        assert torch.equal(clip.encode_image(pixels), clip.encode_image(pixels.float() / 255))
        assert torch.equal(clip(x.double(), ids), clip(x, ids))
    assert torch.equal(C.embed_images(clip, x.numpy().astype(np.float64)), C.embed_images(clip, x))
    assert torch.equal(C.embed_images(clip, pixels, batch_size=2), C.embed_images(clip, pixels.float() / 255, batch_size=2))


def test_patch_embedding_converts_like_the_vit():
    emb = V.PatchEmbedding(4, 3, 8)
    x = torch.rand(2, 3, 8, 8)
    pixels = (x * 255).round().to(torch.uint8)
    with torch.no_grad():
        assert torch.equal(emb(x.double()), emb(x))
        assert torch.equal(emb(pixels), emb(pixels.float() / 255))


def test_float_masks_are_added_to_the_scores_like_torch_does():
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 2, 4, 6, 8).unbind(0)
    additive = torch.randn(6, 6)
    out, weights = V.scaled_dot_product_attention(q, k, v, additive)
    assert torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=additive), atol=1e-5)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    as_float = torch.zeros(6, 6).masked_fill(~causal, float("-inf"))
    assert torch.equal(V.scaled_dot_product_attention(q, k, v, as_float)[1],
                       V.scaled_dot_product_attention(q, k, v, causal)[1])


def test_numpy_scalars_and_arrays_are_accepted_where_python_values_are():
    assert V.ViTConfig(dim=np.int64(64), pos_embedding=np.bool_(False)).to_dict() == V.ViTConfig(pos_embedding=False).to_dict()
    assert type(V.ViTConfig(dim=np.int64(64)).dim) is int                 # JSON-ready: the cache key is unchanged
    recipe = C.Recipe(steps=np.int64(10), lr=np.float32(0.5), loss=np.str_("siglip"))
    assert recipe.to_dict() == C.Recipe(steps=10, lr=0.5, loss="siglip").to_dict()
    assert C.Recipe(lr=1).to_dict()["lr"] == 1 and type(C.Recipe(lr=1).lr) is int   # valid values are not rewritten
    a = ShapesWorld(image_size=np.int64(32), noise=np.float64(0.03), seed=np.int64(0), held_out=[["red", "circle"]])
    b = ShapesWorld(image_size=32, noise=0.03, seed=0, held_out=[("red", "circle")])
    assert np.array_equal(a.sample(np.int64(5), seed=np.int64(1)).images, b.sample(5, seed=1).images)
    assert world.is_held_out(np.str_("purple"), np.str_("triangle"))
    assert torch.equal(C.tokenize(np.array(["a red circle", "a shape"]), max_length=np.int64(8)),
                       C.tokenize(["a red circle", "a shape"], max_length=8))
    sim = torch.eye(3)
    assert C.recall_at_k(sim, np.int64(1), targets=[0, 1, 2]) == C.recall_at_k(sim, 1) == 1.0
    assert T.shapes_tokenizer(["hello"]) is T.shapes_tokenizer(("hello",))
    S.seed_everything(np.int64(4))
    assert W.position_name(np.float32(1.0), np.float64(31.0), np.int64(32)) == "bottom left"


def test_plotting_takes_numpy_captions_tensors_with_gradients_and_a_single_logy_name():
    fig = P.show_images(data.images, np.array(data.captions), ncols=np.int64(2))
    assert len(fig.axes) == 4
    probs = torch.tensor([0.2, 0.8], requires_grad=True) * 1.0
    ax = P.bar_chart(["a", "b"], probs, highlight=np.int64(1))
    assert [p.get_width() for p in ax.patches] == pytest.approx([0.2, 0.8])
    P.heatmap(torch.eye(2, requires_grad=True) * 1.0, ["a", "b"], ["x", "y"])
    fig = P.plot_curves({"loss": torch.linspace(2, 1, 10)}, logy="loss")
    assert fig.axes[0].get_yscale() == "log"
    plt.close("all")


def test_report_takes_numpy_and_tensor_values(capsys):
    assert R.expect("x", np.float32(0.5), at_least=np.float64(0.25)) == 0.5
    assert R.expect("x", torch.tensor(3), at_most=3) == 3.0
    assert R.expect("x", np.array([0.75]), at_least=0.5) == 0.75
    assert "✓ x" in capsys.readouterr().out
    assert math.isnan(R._as_number(float("nan")))                  # a NaN result is recorded, then fails its bar
