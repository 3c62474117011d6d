"""Chapter 10's code model: its tokenizer, its masked loss, training, writing programs, checks."""

import pytest
import torch
import torch.nn.functional as F

from vlmlib import codegen as C
from vlmlib import programs as P

TINY = C.CodeGenConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, max_positions=96)


@pytest.fixture(scope="module")
def tok():
    return C.code_tokenizer()


def test_the_tokenizer_round_trips_programs_and_descriptions_exactly(tok):
    for split in ("train", "test", "holdout"):
        for e in P.dataset(150, split, seed=5):
            ids = tok.program_ids(e.program)
            assert tok.decode_program(ids) == e.program
            assert tok.decode_description(tok.description_ids(e.description)) == e.description
            assert tok.unk_id not in tok.description_ids(e.description)        # every word is known
    # the API's pieces are single tokens: a line of the canonical text is 11 tokens, not 60 characters
    line = 'scene.add("circle", colour="red", size="small", cell=(0, 2))'
    assert len(tok.program_ids(line)) == 11
    # any ASCII text survives, even what is not a program of the language
    odd = 'import os\n\tos.system("rm -rf /")  # {}[]~`\\\n  x=1;'
    assert tok.decode_program(tok.program_ids(odd)) == odd
    with pytest.raises(ValueError, match="ASCII"):
        tok.program_ids("scene.add(\"círculo\")")
    assert tok.description_ids("a red dodecahedron")[-1] == tok.unk_id


def test_the_sequence_is_description_separator_program_end(tok):
    ids, target = tok.encode("a red circle on the left", 'scene.add("circle")')
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    sep = ids.index(tok.sep_id)
    assert sep == 1 + 6 and not any(target[:sep + 1]) and all(target[sep + 1:])


def test_the_loss_is_taken_on_program_tokens_only(tok):
    data = P.dataset(4, "train", seed=1)
    batch = tok.batch([e.description for e in data], [e.program for e in data])
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    for row in range(len(data)):
        sep = ids[row].tolist().index(tok.sep_id)
        assert (labels[row, :sep + 1] == -100).all()                       # description and separator
        assert (labels[row][mask[row] == 0] == -100).all()                 # padding
        n_prog = len(tok.program_ids(data[row].program)) + 1               # the program and [EOS]
        assert (labels[row] != -100).sum() == n_prog
    torch.manual_seed(0)
    model = C.new_model(TINY, tok)
    loss = model(**batch).loss
    logits = model(input_ids=ids, attention_mask=mask).logits
    # by hand: position t predicts token t+1; only program targets count
    target = labels[:, 1:]
    keep = target != -100
    manual = F.cross_entropy(logits[:, :-1][keep], target[keep])
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    # changing the description changes no label
    other = tok.batch(["a blue square at the top"] * 4, [e.program for e in data])
    assert [l[l != -100].tolist() for l in other["labels"]] == [l[l != -100].tolist() for l in labels]


def test_a_tiny_model_learns_a_handful_of_pairs_and_its_programs_run(tok):
    torch.set_num_threads(1)
    data = P.dataset(6, "train", seed=3)
    torch.manual_seed(0)
    model = C.new_model(TINY, tok)
    history = C.fit(model, tok, [e.description for e in data], [e.program for e in data], steps=300,
                    batch_size=6, lr=1e-2, desc="overfitting")
    assert history["loss"][-1] < 0.05 < history["loss"][0]
    written = C.write_programs(model, tok, [e.description for e in data])
    assert [w[0] for w in written] == [e.program for e in data]
    assert all(ok for ok, _ in C.check_programs(data, [w[0] for w in written]))
    rates = C._rates(data, [True] * 6)
    assert rates["all"] == 1.0 and set(rates) == {"scene", "relation", "line", "all"}


def test_write_programs_shapes_seeds_and_batches(tok):
    torch.manual_seed(1)
    model = C.new_model(TINY, tok).eval()
    descriptions = ["a small red circle at the top left", "two large blue squares in the left column",
                    "a purple triangle above a yellow circle"]
    out = C.write_programs(model, tok, descriptions, temperature=1.0, n=4, seed=7, max_new_tokens=12)
    assert len(out) == 3 and all(len(o) == 4 and all(isinstance(p, str) for p in o) for o in out)
    assert out == C.write_programs(model, tok, descriptions, temperature=1.0, n=4, seed=7, max_new_tokens=12)
    assert out != C.write_programs(model, tok, descriptions, temperature=1.0, n=4, seed=8, max_new_tokens=12)
    # greedy, with left padding: one description at a time or all together write the same programs
    one = C.write_programs(model, tok, descriptions, max_new_tokens=12, batch_size=1)
    assert one == C.write_programs(model, tok, descriptions, max_new_tokens=12, batch_size=3)
    assert all(len(o) == 1 for o in one)
    # sampling leaves the global random state alone
    state = torch.random.get_rng_state()
    C.write_programs(model, tok, descriptions[:1], temperature=0.5, n=2, seed=3, max_new_tokens=4)
    assert torch.equal(state, torch.random.get_rng_state())


def test_arguments_are_checked_with_clear_errors(tok):
    model = C.new_model(TINY, tok)
    with pytest.raises(TypeError, match="descriptions"):
        C.write_programs(model, tok, "a red circle")
    with pytest.raises(ValueError, match="temperature"):
        C.write_programs(model, tok, ["a red circle"], temperature=-0.1)
    with pytest.raises(ValueError, match="n must be 1 for greedy"):
        C.write_programs(model, tok, ["a red circle"], n=3)
    with pytest.raises(TypeError, match="tokenizer"):
        C.write_programs(model, None, ["a red circle"])
    with pytest.raises(ValueError, match="heads"):
        C.CodeGenConfig(hidden_size=30, heads=4)
    with pytest.raises(ValueError, match="CodeGenRecipe.steps"):
        C.CodeGenRecipe(steps=0)
    with pytest.raises(ValueError, match="CodeGenRecipe.lr"):
        C.CodeGenRecipe(lr=0.0)
    with pytest.raises(TypeError, match="CodeGenConfig"):
        C.new_model({"hidden_size": 32})
    with pytest.raises(ValueError, match="splits"):
        C.evaluate(model, tok, n=2, splits=("train",))
    with pytest.raises(ValueError, match="ks"):
        C.pass_at_k_curve(model, tok, n_samples=4, ks=(1, 5))
    with pytest.raises(ValueError, match="one program per example"):
        C.check_programs(P.dataset(2), ["scene.add()"])
    with pytest.raises(ValueError, match="programs"):
        tok.batch(["a red circle"], ["x", "y"])


def test_check_programs_gives_the_reason(tok):
    data = P.dataset(2, "train", seed=0)
    verdicts = C.check_programs(data, [data[0].program, "import os"])
    assert verdicts[0] == (True, "")
    assert verdicts[1][0] is False and "import" in verdicts[1][1]


def test_build_codegen_goes_through_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMLIB_CACHE", str(tmp_path))
    recipe = C.CodeGenRecipe(steps=2, batch_size=4, n_train=12)
    model, tok, art = C.build_codegen(TINY, recipe, verbose=False)
    assert not art.from_cache and art.metrics["parameters"] == sum(p.numel() for p in model.parameters())
    again, _, art2 = C.build_codegen(TINY, recipe, verbose=False)
    assert art2.from_cache
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
