"""attn_relations (MiniLMv2 self-attention relation transfer): the relation KL, the Q/K/V hooks on BERT
and MPNet, the token-id map between vocabularies, training that lowers the loss, and a CLI run."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import FAST, corpus, make_tiny_bert, write_csv
from typer.testing import CliRunner

from distill.cli import app
from distill.errors import DistillError
from distill.relations import QKVCapture, encoder_layers, id_map, qkv_modules, relation_heads, relation_kl


def _qkv(seed: int, b: int = 3, length: int = 7, width: int = 16) -> tuple:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, length, width, generator=g) for _ in range(3))


def test_relation_kl_is_zero_for_equal_relations_and_positive_otherwise():
    mask = torch.ones(3, 7)
    x, y = _qkv(0), _qkv(1)
    assert torch.allclose(relation_kl(x, x, mask, heads=4), torch.zeros(3), atol=1e-6)
    loss = relation_kl(y, x, mask, heads=4)
    assert loss.shape == (3,) and bool((loss > 0.01).all())
    # a scaled copy has sharper relations: no longer equal
    assert bool((relation_kl(tuple(2 * t for t in x), x, mask, heads=4) > 1e-3).all())


def test_relation_kl_ignores_padding():
    """An example's loss is the same alone (unpadded) and in a batch padded to a longer text."""
    s, t = _qkv(0, b=1, length=4), _qkv(1, b=1, length=4)
    alone = relation_kl(s, t, torch.ones(1, 4), heads=2)
    pad = lambda q: torch.cat([q, torch.randn(1, 3, q.shape[-1]) * 5], 1)  # noqa: E731 - garbage in padding
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    padded = relation_kl(tuple(map(pad, s)), tuple(map(pad, t)), mask, heads=2)
    assert torch.allclose(alone, padded, atol=1e-5), (alone, padded)


def test_relations_compare_across_widths_and_train_only_the_student():
    """Student width 8, teacher width 16, 2 relation heads: the KL is finite, gradients reach only the student."""
    student = tuple(t.requires_grad_() for t in _qkv(0, width=8))
    teacher = tuple(t.requires_grad_() for t in _qkv(1, width=16))
    loss = relation_kl(student, teacher, torch.ones(3, 7), heads=2).mean()
    loss.backward()
    assert torch.isfinite(loss) and all(t.grad is not None for t in student) and all(t.grad is None for t in teacher)


def _tiny_mpnet(vocab: int, layers: int = 2):
    from transformers import MPNetConfig, MPNetForSequenceClassification

    torch.manual_seed(0)
    return MPNetForSequenceClassification(MPNetConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=layers,
                                                      num_attention_heads=4, intermediate_size=64,
                                                      max_position_embeddings=130, num_labels=2)).eval()


def test_qkv_hooks_find_bert_and_mpnet_projections_and_stop_at_the_layer(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    bert = AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval()
    q, k, v = qkv_modules(bert, -1)
    assert q is encoder_layers(bert)[1].attention.self.query and v is encoder_layers(bert)[1].attention.self.value
    mpnet = _tiny_mpnet(vocab=60)
    q, k, v = qkv_modules(mpnet, 0)
    assert k is mpnet.mpnet.encoder.layer[0].attention.attn.k

    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 9, 2, 1]])
    mask = (ids != 1).long()
    ran_above = []
    handle = mpnet.mpnet.encoder.layer[1].register_forward_hook(lambda *a: ran_above.append(1))
    with torch.no_grad():
        stopped = QKVCapture(mpnet, 0, stop=True)
        early = stopped.run(mpnet, input_ids=ids, attention_mask=mask)
        stopped.remove()
        assert ran_above == []  # the layer above the relation layer never ran
        full = QKVCapture(mpnet, 0)
        mpnet(input_ids=ids, attention_mask=mask)
        late = full.take()
    handle.remove()
    assert ran_above == [1]
    assert all(torch.equal(a, b) and a.shape == (2, 5, 32) for a, b in zip(early, late))
    with pytest.raises(DistillError, match=r"relation_layer 5: the model has layers 0\.\.1"):
        qkv_modules(mpnet, 5)


def test_id_map_translates_word_pieces_and_special_tokens_by_role(tiny_bert, tmp_path):
    """A teacher vocabulary with the student's word pieces at other ids and other special tokens (as
    mpnet-base's is to minilm-l6's): the mapped student ids are what the teacher's tokenizer gives."""
    from transformers import AutoTokenizer, BertTokenizerFast

    student_tok = AutoTokenizer.from_pretrained(tiny_bert)
    pieces = [t for t, _ in sorted(student_tok.get_vocab().items(), key=lambda kv: kv[1])]
    (tmp_path / "vocab.txt").write_text("\n".join(["<s>", "<pad>", "</s>", "<unk>"] + pieces) + "\n")
    teacher_tok = BertTokenizerFast(str(tmp_path / "vocab.txt"), cls_token="<s>", sep_token="</s>",
                                    pad_token="<pad>", unk_token="<unk>")
    texts = ["a gripping and beautifully acted film", "boring slow and far too long"]
    s_ids, t_ids = student_tok(texts)["input_ids"], teacher_tok(texts)["input_ids"]
    assert s_ids[0] != t_ids[0]
    table = id_map(student_tok, teacher_tok, {i for ids in s_ids for i in ids})
    assert [table[torch.tensor(ids)].tolist() for ids in s_ids] == t_ids
    assert int(table[student_tok.pad_token_id]) == teacher_tok.pad_token_id

    # a word piece the teacher lacks: refused, naming it
    (tmp_path / "vocab.txt").write_text("\n".join(["<s>", "<pad>", "</s>", "<unk>"] + [p for p in pieces if p != "film"]))
    short = BertTokenizerFast(str(tmp_path / "vocab.txt"), cls_token="<s>", sep_token="</s>", pad_token="<pad>",
                              unk_token="<unk>")
    with pytest.raises(DistillError, match=r"1 tokens of the student's texts are not in the teacher's vocabulary \(e\.g\. \['film'\]\)"):
        id_map(student_tok, short, {i for ids in s_ids for i in ids})


def test_relation_heads_must_divide_both_widths(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    bert = AutoModelForSequenceClassification.from_pretrained(tiny_bert)  # width 32, 2 heads
    mpnet = _tiny_mpnet(vocab=60)  # width 32, 4 heads
    assert relation_heads(bert, mpnet, None) == 2 and relation_heads(mpnet, bert, None) == 4
    with pytest.raises(DistillError, match=r"relation_heads 3: the student's width 32 and the teacher's 32 must both divide by it"):
        relation_heads(bert, mpnet, 3)


def test_training_on_relations_lowers_the_loss(tiny_bert, tmp_path):
    """A 1-layer student of another width learns a 2-layer teacher's last-layer relations through the
    hooks: a few AdamW steps on attn_relations alone cut the KL."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval().requires_grad_(False)
    student_dir = make_tiny_bert(tmp_path / "student", layers=1, hidden=16, seed=1)
    student = AutoModelForSequenceClassification.from_pretrained(student_dir)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    batch = tok([r["text"] for r in corpus(1)[:16]], padding=True, return_tensors="pt")
    t_cap, s_cap = QKVCapture(teacher, -1, stop=True), QKVCapture(student, -1)
    with torch.no_grad():
        target = t_cap.run(teacher, **batch)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        student(**batch)
        loss = relation_kl(s_cap.take(), target, batch["attention_mask"], heads=2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_cli_run_with_attn_relations_records_them(tmp_path, tiny_bert):
    csv = write_csv(tmp_path, corpus(4))
    args = ["run", "--models-dir", str(tmp_path / "models")]
    for s in [f"data.source={csv}", f"teacher.model={tiny_bert}", "name=rel", *FAST,
              "distill.losses={kl: 0.5, ce: 0.5, attn_relations: 1.0}"]:
        args += ["--set", s]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "models" / "rel" / "student" / "metrics.json").read_text())
    assert m["relations"] == {"teacher_layer": 1, "heads": 2} and m["losses"]["attn_relations"] == 1.0
    log = [json.loads(line) for line in (tmp_path / "models" / "rel" / "logs" / "train.jsonl").read_text().splitlines()]
    assert any(row.get("stage") == "student" for row in log)


def test_relation_keys_enter_the_student_digest_only_when_set():
    """Older runs resume: the student stage hashes relation_layer/relation_heads only when set."""
    from distill.recipe import digest_view, load_recipe

    assert "relation_layer" not in digest_view(load_recipe(None, []), "distill")
    set_ = digest_view(load_recipe(None, ["distill.relation_layer=-2", "distill.relation_heads=4"]), "distill")
    assert set_["relation_layer"] == -2 and set_["relation_heads"] == 4
