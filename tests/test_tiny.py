from __future__ import annotations


def test_tiny_bert_is_small_real_and_loadable(tiny_bert):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    size = sum(p.stat().st_size for p in tiny_bert.iterdir())
    assert size < 1_000_000
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval()
    batch = tok(["a gripping film", "boring slow"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    # noise on the weights: no two LayerNorm weight vectors are the constant 1.0 of a fresh init
    ln = model.bert.embeddings.LayerNorm.weight
    assert ln.std() > 0
