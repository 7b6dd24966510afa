from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill.student_init import from_teacher_layers


def _configs():
    from transformers import BertConfig, LlamaConfig, MPNetConfig, RobertaConfig

    common = dict(vocab_size=120, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                  num_labels=3)
    return {
        "bert": BertConfig(**common, max_position_embeddings=64),
        "roberta": RobertaConfig(**common, max_position_embeddings=70, pad_token_id=1),
        "mpnet": MPNetConfig(**common, max_position_embeddings=70),
        "llama": LlamaConfig(**common, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0),
    }


@pytest.mark.parametrize("family", ["bert", "roberta", "mpnet", "llama"])
def test_a_student_with_all_teacher_layers_reproduces_the_teacher(family):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_config(_configs()[family]).eval()
    ids = torch.randint(3, 120, (2, 12))
    mask = torch.ones_like(ids)
    full = from_teacher_layers(teacher, [0, 1, 2, 3]).eval()
    with torch.no_grad():
        assert torch.allclose(full(input_ids=ids, attention_mask=mask).logits,
                              teacher(input_ids=ids, attention_mask=mask).logits, atol=1e-6)
    half = from_teacher_layers(teacher, [1, 3])
    assert half.config.num_hidden_layers == 2
    t_sd, s_sd = teacher.state_dict(), half.state_dict()
    copied = [k for k in s_sd if ".1." in k and k.replace(".1.", ".3.", 1) in t_sd]
    assert copied and all(torch.equal(s_sd[k], t_sd[k.replace(".1.", ".3.", 1)]) for k in copied)
    assert sum(p.numel() for p in half.parameters()) < sum(p.numel() for p in teacher.parameters())


def test_layer_indices_beyond_the_teacher_are_refused():
    from transformers import AutoModelForSequenceClassification

    teacher = AutoModelForSequenceClassification.from_config(_configs()["bert"])
    with pytest.raises(DistillError, match="layers 0..3"):
        from_teacher_layers(teacher, [0, 7])


def test_label_noise_drop_matches_the_flagged_texts_when_the_teacher_saw_a_subsample():
    """teacher.max_train_samples: label_noise.json's row numbers index the teacher's subsample, not
    data/train.jsonl; the student must drop the gold label of the flagged *texts*."""
    import numpy as np

    from distill.student import drop_noisy_labels
    from distill.teacher import _subsample, label_noise

    train = [{"text": f"review number {i}", "label": i % 2} for i in range(40)]
    seen = _subsample(train, 10, seed=0)  # what the teacher trained and scored
    assert [r["text"] for r in seen[7:]] != [r["text"] for r in train[7:10]]
    logits = np.array([[-5.0, 5.0] if r["label"] == 1 else [5.0, -5.0] for r in seen[:7]]
                      + [[5.0, -5.0] if r["label"] == 1 else [-5.0, 5.0] for r in seen[7:]])
    flagged = label_noise(seen, logits, ["neg", "pos"], threshold=0.9)  # the teacher contradicts seen[7:]
    assert sorted(f["row"] for f in flagged) == [7, 8, 9]
    pool = [{"text": r["text"], "label": r["label"], "origin": "train"} for r in train]
    pool.append({"text": seen[7]["text"], "label": None, "origin": "augmented"})
    assert drop_noisy_labels(pool, flagged) == 3
    dropped = {p["text"] for p in pool if p["origin"] == "train" and p["label"] is None}
    assert dropped == {r["text"] for r in seen[7:]}  # not train[7..9], what the row numbers would name
