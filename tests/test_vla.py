"""The vision-language-action policy of chapter 11 (vlmlib.vla): shapes, the text-blind baseline,
learning, DAgger's labels, the mirror augmentation and argument checks."""

import numpy as np
import pytest
import torch

from vlmlib import gridworld as G
from vlmlib import vla

TINY = vla.VLAConfig(dim=32, depth=1, heads=2)


def _images_and_texts(n=6, seed=3):
    todo = G.tasks(n, "train", seed)
    return G.render_many([t.start for t in todo], [t.seed for t in todo]), [t.instruction for t in todo], todo


def test_every_instruction_of_every_split_tokenizes_and_the_outputs_have_the_right_shapes():
    for split in G.SPLITS:
        ids = vla.tokenize([t.instruction for t in G.tasks(30, split, 1)])
        assert ids.shape == (30, vla.MAX_WORDS) and ids.dtype == torch.long and (ids[:, 0] > 0).all()
    images, texts, todo = _images_and_texts()
    torch.manual_seed(0)
    model = vla.VLAPolicy(TINY).eval()
    logits = model(images, vla.tokenize(texts))
    assert logits.shape == (6, len(G.ACTIONS)) and torch.isfinite(logits).all()
    assert model.vit.config.patch_size == G.CELL and model.vit.config.num_patches == G.GRID ** 2   # a token per cell
    actions = vla.act(model, images, texts)
    assert actions.shape == (6,) and actions.dtype == torch.long
    policy = vla.policy_fn(model)
    assert policy(images[0], texts[0]) == G.ACTIONS[int(actions[0])]                  # one image, as run_episode asks
    assert policy(images, texts) == [G.ACTIONS[int(a)] for a in actions]              # a batch, as run_episodes asks
    episode = G.run_episode(policy, todo[0], max_steps=3)
    assert episode.steps <= 3 and len(episode.states) == episode.steps + 1


def test_a_first_frame_policy_reads_the_start_image_and_is_handed_it_in_episodes():
    images, texts, todo = _images_and_texts()
    config = vla.VLAConfig(dim=32, depth=1, heads=2, first_frame=True)
    assert config.vit_config().channels == 6
    torch.manual_seed(0)
    model = vla.VLAPolicy(config).eval()
    words = vla.tokenize(texts)
    later = G.render_many([G.step(t.start, "up") for t in todo], [t.seed for t in todo])
    with torch.no_grad():
        assert not torch.allclose(model(later, words, images), model(later, words, later))    # the start matters
    policy = vla.policy_fn(model)
    assert policy.reads_first_frame and not vla.policy_fn(vla.VLAPolicy(TINY)).reads_first_frame
    actions = vla.act(model, later, texts, images)
    assert policy(later, texts, images) == [G.ACTIONS[int(a)] for a in actions]
    assert policy(later[0], texts[0], images[0]) == G.ACTIONS[int(actions[0])]
    # in an episode, the first call sees the start as both images
    assert G.run_episode(policy, todo[0], max_steps=1).actions == [G.ACTIONS[int(vla.act(model, images[:1], texts[:1], images[:1])[0])]]
    # the training data carry each triple's start image, drawn as the episode's first frame
    data, demos = vla.expert_data(4, seed=2), G.demonstrations(4, "train", 2)
    want = torch.stack([(G.render(demos.tasks[e].start, demos.tasks[e].seed) * 255).round().to(torch.uint8)
                        for e in demos.episode.tolist()])
    assert torch.equal(data.first, want)
    with pytest.raises(ValueError, match="first image"):
        model(later, words)
    with pytest.raises(ValueError, match="first_frame=True"):
        vla.VLAPolicy(TINY)(later, words, images)
    with pytest.raises(ValueError, match="first must have shape"):
        model(later, words, images[:, :, :20])
    with pytest.raises(ValueError, match="first must have the shape"):
        model(later, words, images[:2])


def test_the_sincos_positions_tell_every_cell_apart_and_start_the_vits_position_embeddings():
    pos = vla.sincos_positions(G.GRID, 32)
    assert pos.shape == (G.GRID ** 2, 32) and pos.abs().max() <= 1.0
    assert torch.cdist(pos, pos).add(torch.eye(G.GRID ** 2)).min() > 0.1            # 25 distinct codes
    rows, cols = pos[:, :16], pos[:, 16:]
    assert torch.equal(rows[0], rows[G.GRID - 1]) and torch.equal(cols[0], cols[G.GRID])   # same row / same column
    model = vla.VLAPolicy(TINY)
    assert torch.equal(model.vit.pos_embed[0, 1:].detach(), pos)
    assert not torch.equal(vla.VLAPolicy(vla.VLAConfig(dim=32, depth=1, heads=2, pos_init="random")).vit.pos_embed[0, 1:], pos)


def test_the_text_blind_policy_ignores_the_instruction_and_the_full_one_reads_it():
    images, texts, _ = _images_and_texts()
    other = ["push the red circle to the left"] * len(texts)
    torch.manual_seed(0)
    blind = vla.VLAPolicy(vla.VLAConfig(dim=32, depth=1, heads=2, text_blind=True)).eval()
    with torch.no_grad():
        assert torch.equal(blind(images, vla.tokenize(texts)), blind(images, vla.tokenize(other)))
    torch.manual_seed(0)
    seeing = vla.VLAPolicy(TINY).eval()
    with torch.no_grad():
        assert not torch.allclose(seeing(images, vla.tokenize(texts)), seeing(images, vla.tokenize(other)))
        # padding is masked: extra padding columns change nothing
        assert torch.allclose(seeing(images, vla.tokenize(texts, 14)), seeing(images, vla.tokenize(texts, 16)), atol=1e-6)


def test_a_tiny_policy_overfits_a_handful_of_demonstrations_and_training_is_deterministic():
    recipe = vla.VLARecipe(steps=800, batch_size=12, lr=2e-3, weight_decay=0.0, n_tasks=3, dagger_rounds=0, seed=2)
    model, history, info = vla.train_vla(vla.VLAConfig(dim=32, depth=2, heads=2), recipe, progress=False)
    data = vla.expert_data(3, seed=2)
    assert info["expert_triples"] == len(data.actions) > 6
    with torch.no_grad():
        predicted = model(data.images.float() / 255, data.words).argmax(1)
    assert (predicted == data.actions).float().mean() == 1.0
    assert history["loss"][-1] < 0.2 < history["loss"][0]
    short = vla.VLARecipe(steps=10, batch_size=16, n_tasks=3, dagger_rounds=1, dagger_tasks=2, dagger_steps=5, mirror=0.5)
    (a, _, info_a), (b, _, info_b) = (vla.train_vla(TINY, short, progress=False) for _ in range(2))
    assert info_a["dagger_triples"] == info_b["dagger_triples"] and info_a["dagger_triples"][0] > 0
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_dagger_labels_each_visited_state_with_the_expert_action():
    torch.manual_seed(0)
    model = vla.VLAPolicy(TINY).eval()
    data, rate = vla.dagger_data(model, 4, seed=5)
    episodes = G.run_episodes(vla.policy_fn(model), G.tasks(4, "train", 5))
    want = [G.ACTIONS.index(a) for e in episodes for s in e.states[:-1]
            if (a := G.expert_action(s, e.task)) is not None]
    assert data.actions.tolist() == want and len(data.images) == len(want) == len(data.words) == len(data.first)
    assert rate == np.mean([e.success for e in episodes])


def test_the_mirror_swaps_left_and_right_in_the_image_the_words_and_the_action():
    task = G.tasks(1, "train", 7, families=["push"])[0]
    s = task.start
    flipped = G.State((s.agent[0], G.GRID - 1 - s.agent[1]),
                      tuple(G.GridShape(x.colour, x.kind, x.size, (x.cell[0], G.GRID - 1 - x.cell[1])) for x in s.shapes))
    image = G.render(s, seed=1, noise=0.0)[None]
    words = vla.tokenize(["push the red circle to the left", "go to the shape to the right of the blue cross"])
    actions = torch.arange(len(G.ACTIONS))
    m_images, m_words, m_actions = vla.mirror(image, words, actions)
    assert torch.allclose(m_images[0], G.render(flipped, seed=1, noise=0.0), atol=1e-5)
    assert torch.equal(m_words, vla.tokenize(["push the red circle to the right", "go to the shape to the left of the blue cross"]))
    assert [G.ACTIONS[a] for a in m_actions] == ["up", "down", "right", "left", "stop"]
    assert torch.equal(vla.mirror(*vla.mirror(image, words, actions))[1], words)


def test_the_grounding_labels_name_the_target_in_every_state_and_the_auxiliary_loss_learns_them():
    data, demos = vla.expert_data(6, seed=2), G.demonstrations(6, "train", 2)
    assert torch.equal(data.actions, demos.actions) and torch.equal(data.images, (demos.images * 255).round().to(torch.uint8))
    for k, (s, e) in enumerate(zip(demos.states, demos.episode.tolist())):
        t = demos.tasks[e]
        (r, c), goal = s.shapes[t.target].cell, t.goal_cell        # refer: the shape to reach, not the anchor
        assert data.cells[k].tolist() == [r * G.GRID + c, -1 if goal is None else goal[0] * G.GRID + goal[1]]
    assert {t.family for t in demos.tasks} == set(G.FAMILIES) and (data.cells[:, 0] != data.cells[0, 0]).any()
    # mirrored: column c becomes 4 - c, "none" stays
    assert vla._mirror_cells(torch.tensor([[0, 8], [24, -1]])).tolist() == [[4, 6], [20, -1]]
    config = vla.VLAConfig(dim=32, depth=2, heads=2, grounding=True)
    recipe = vla.VLARecipe(steps=400, batch_size=12, lr=2e-3, weight_decay=0.0, n_tasks=6, dagger_rounds=0,
                           mirror=0.5, grounding=1.0, seed=2)
    model, history, _ = vla.train_vla(config, recipe, progress=False)
    assert np.mean(history["grounding"][-20:]) < 0.5 < np.mean(history["grounding"][:20])
    with torch.no_grad():
        logits, where = model.cell_logits(data.images.float() / 255, data.words)
    assert torch.equal(logits, model(data.images.float() / 255, data.words)) and where.shape == (len(logits), 2, G.GRID ** 2)
    assert (where[:, 0].argmax(-1) == data.cells[:, 0]).float().mean() > 0.9
    push = data.cells[:, 1] >= 0
    assert (where[push, 1].argmax(-1) == data.cells[push, 1]).float().mean() > 0.9
    with pytest.raises(ValueError, match="VLAConfig\\(grounding=True\\)"):
        vla.train_vla(TINY, recipe, progress=False)
    with pytest.raises(ValueError, match="no grounding head"):
        vla.VLAPolicy(TINY).cell_logits(data.images[:1], data.words[:1])


def test_evaluate_runs_episodes_and_reports_each_split_and_family():
    torch.manual_seed(0)
    model = vla.VLAPolicy(TINY).eval()
    out = vla.evaluate(model, n=6, splits=["test", "holdout_pairs"], max_steps=4)
    assert set(out) == {"test", "holdout_pairs"}
    for rates in out.values():
        assert set(rates) == {"all", "n", *G.FAMILIES} and rates["n"] == 6
        assert all(0.0 <= rates[k] <= 1.0 for k in ("all", *G.FAMILIES))
    # the expert, as a policy, succeeds on every task of every split
    assert all(G.run_episode(G.expert_policy(t), t).success for t in G.tasks(6, "holdout_pairs", 1000))


def test_bad_arguments_are_refused_with_clear_errors():
    with pytest.raises(ValueError, match="heads"):
        vla.VLAConfig(dim=30, heads=4)
    with pytest.raises(TypeError, match="VLAConfig.text_blind"):
        vla.VLAConfig(text_blind="yes")
    with pytest.raises(ValueError, match="multiple of 4"):
        vla.VLAConfig(dim=18, heads=2)
    with pytest.raises(ValueError, match="VLAConfig.pos_init"):
        vla.VLAConfig(pos_init="zeros")
    with pytest.raises(ValueError, match="VLARecipe.steps"):
        vla.VLARecipe(steps=0)
    with pytest.raises(ValueError, match="VLARecipe.mirror"):
        vla.VLARecipe(mirror=1.5)
    with pytest.raises(ValueError, match="VLARecipe.grounding"):
        vla.VLARecipe(grounding=-1.0)
    with pytest.raises(TypeError, match="VLAConfig.grounding"):
        vla.VLAConfig(grounding="yes")
    with pytest.raises(TypeError, match="VLAConfig.first_frame"):
        vla.VLAConfig(first_frame=1)
    with pytest.raises(TypeError, match="VLAConfig"):
        vla.VLAPolicy({"dim": 32})
    with pytest.raises(TypeError, match="VLARecipe"):
        vla.train_vla(TINY, {"steps": 3})
    with pytest.raises(TypeError, match="wrap one in a list"):
        vla.tokenize("go to the red circle")
    with pytest.raises(ValueError, match="does not know.*'jump'"):
        vla.tokenize(["jump to the red circle"])
    with pytest.raises(ValueError, match="max_words"):
        vla.tokenize(["go to the red circle"], max_words=3)
    model = vla.VLAPolicy(TINY)
    images, texts, _ = _images_and_texts(2)
    with pytest.raises(ValueError, match="words must be an integer tensor"):
        model(images, vla.tokenize(texts).float())
    with pytest.raises(ValueError, match="images must have shape"):
        model(images[:, :, :32, :32], vla.tokenize(texts))
    with pytest.raises(ValueError, match="same length"):
        vla.act(model, images, texts[:1])
    with pytest.raises(TypeError, match="model must be a vla.VLAPolicy"):
        vla.evaluate("model")
    with pytest.raises(ValueError, match="splits"):
        vla.evaluate(model, n=2, splits=["validation"])
    with pytest.raises(ValueError, match="n must be at least 1"):
        vla.evaluate(model, n=0)
