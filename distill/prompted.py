"""An instruct causal LM as a few-shot teacher (`teacher.kind: prompted`): no training.

The prompt is an instruction plus k labelled training examples per class (a chat conversation
under the tokenizer's chat template, else plain "Text: ... / Label: ..." lines), then the text to
label. Each label has a verbalizer (its name, or words from the recipe); its score is the sum of the
log-probabilities of the verbalizer's tokens as the continuation of the prompt, and the teacher's
logits are the log-softmax of those scores over the labels. Contextual calibration (Zhao et al.
2021, "Calibrate Before Use", arXiv:2102.09690) divides by the label distribution on a
content-free text, i.e. subtracts its scores.

The few-shot prefix is the same for every text, so its KV cache is computed once and shared by
every batch (measured when this was designed: SmolLM2 at 0.56 s per example with a 300-token prompt, 0.11 s for a
60-token suffix). Texts in a batch are left-padded between prefix and text, with the attention mask
and position ids set so that each text sees exactly prefix + its own tokens.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from distill.data.prepare import read_labels, read_split
from distill.device import choose_device
from distill.errors import DistillError

log = logging.getLogger(__name__)

SPEC_FILE = "prompted.json"
_MARK = "\u2063TEXT\u2063"  # placeholder for the text when rendering the chat template


@dataclass
class PromptSpec:
    """Everything that decides the teacher's output; written to teacher/prompted.json."""

    model: str
    names: list[str]
    verbalizers: list[str]  # one per label, in label-id order
    instruction: str  # with {labels} already filled in
    shots: list[dict[str, Any]]  # {"text", "label"} in prompt order, texts already cut to max_length
    chat: bool  # rendered with the tokenizer's chat template
    calibrate: bool
    content_free: str
    max_length: int  # tokens per text, the query's and each example's
    max_prompt_tokens: int
    batch_size: int
    device: str = "auto"
    quantization: str = "none"
    trust_remote_code: bool = False
    allow_pickle: bool = False

    def save(self, folder: Path) -> None:
        (folder / SPEC_FILE).write_text(json.dumps({"kind": "prompted", **dataclasses.asdict(self)}, indent=2,
                                                   ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "PromptSpec":
        data = json.loads((folder / SPEC_FILE).read_text())
        data.pop("kind", None)
        return cls(**data)


def load_lm(ref: str, *, quantization: str = "none", trust_remote_code: bool = False, allow_pickle: bool = False,
            device: str = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """A causal LM and its tokenizer: packaged:NAME (a GGUF is dequantized on load), a folder or a Hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.assets import resolve_model
    from distill.modeling import check_remote_code, check_weights

    path = resolve_model(ref)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if path.endswith(".gguf") and Path(path).is_file():  # packaged:smollm2-135m-instruct (needs `gguf`)
        path, kwargs["gguf_file"] = str(Path(path).parent), Path(path).name
    else:
        check_weights(path, allow_pickle)
        check_remote_code(path, trust_remote_code)
        kwargs["use_safetensors"] = not allow_pickle
    tok = AutoTokenizer.from_pretrained(path, **{k: v for k, v in kwargs.items() if k != "use_safetensors"})
    if quantization != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=quantization == "8bit",
                                                           load_in_4bit=quantization == "4bit",
                                                           bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    if quantization == "none":
        model = model.to(device)
    return model.eval(), tok


def _clip(tok: Any, text: str, max_tokens: int) -> str:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tok.decode(ids[:max_tokens])


def draw_shots(rows: Sequence[dict[str, Any]], num_labels: int, k: int, seed: int) -> list[dict[str, Any]]:
    """k training rows per class (all of a class that has fewer), seeded, in a shuffled order (a
    block of one label at the end of the prompt biases the answer towards it)."""
    rng = np.random.default_rng(seed)
    picked: list[dict[str, Any]] = []
    for label in range(num_labels):
        idx = [i for i, r in enumerate(rows) if r["label"] == label]
        if len(idx) < k:
            log.warning("prompted teacher: class %d has only %d training rows for %d shots", label, len(idx), k)
        picked += [rows[i] for i in sorted(rng.choice(idx, size=min(k, len(idx)), replace=False))] if idx else []
    return [{"text": picked[i]["text"], "label": int(picked[i]["label"])} for i in rng.permutation(len(picked))]


def build_spec(t: Any, names: list[str], train: Sequence[dict[str, Any]], tok: Any, seed: int,
               device: str) -> PromptSpec:
    """The prompt of recipe section `teacher` (kind prompted) for these labels and training rows."""
    from distill.training import pick_max_length

    p = t.prompt
    given = p.verbalizers or {}
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise DistillError(f"teacher.prompt.verbalizers names {unknown}, which are not labels of the data; the labels "
                           f"are {names}.")
    verbalizers = [str(given.get(n, n)) for n in names]
    if len(set(verbalizers)) < len(verbalizers):
        raise DistillError(f"teacher.prompt.verbalizers: two labels share a verbalizer ({verbalizers}); the LM "
                           "could not tell them apart.")
    max_length = pick_max_length(tok, [r["text"] for r in train], t.max_length)
    shots = [{"text": _clip(tok, s["text"], max_length), "label": s["label"]}
             for s in draw_shots(train, len(names), p.shots, seed)]
    return PromptSpec(model=t.model, names=list(names), verbalizers=verbalizers,
                      instruction=p.instruction.replace("{labels}", ", ".join(verbalizers)), shots=shots,
                      chat=bool(p.chat_template and getattr(tok, "chat_template", None)), calibrate=p.calibrate,
                      content_free=p.content_free, max_length=max_length, max_prompt_tokens=p.max_prompt_tokens,
                      batch_size=t.batch_size, device=device, quantization=t.quantization,
                      trust_remote_code=t.trust_remote_code, allow_pickle=t.allow_pickle)


def render(spec: PromptSpec, tok: Any) -> tuple[str, str, str, str]:
    """(prefix, before, after, answer_prefix): a text x is prompted as prefix + before + x + after,
    and label c's answer is answer_prefix + verbalizer[c]. The prefix ends at a message or
    example boundary, so tokenizing it apart from the rest cuts no word in two."""
    v = spec.verbalizers
    if spec.chat:
        msgs = [{"role": "system", "content": spec.instruction}]
        for s in spec.shots:
            msgs += [{"role": "user", "content": f"Text: {s['text']}"}, {"role": "assistant", "content": v[s["label"]]}]
        prefix = tok.apply_chat_template(msgs, tokenize=False)
        full = tok.apply_chat_template(msgs + [{"role": "user", "content": f"Text: {_MARK}"}], tokenize=False,
                                       add_generation_prompt=True)
        if not full.startswith(prefix) or full.count(_MARK) != 1:
            raise DistillError(f"{spec.model}: its chat template does not render the conversation as a prefix that "
                               "grows by one message; set teacher.prompt.chat_template: false for a plain prompt.")
        before, after = full[len(prefix):].split(_MARK)
        return prefix, before, after, ""
    prefix = spec.instruction + "".join(f"\n\nText: {s['text']}\nLabel: {v[s['label']]}" for s in spec.shots)
    return prefix, "\n\nText: ", "\nLabel:", " "


class PromptedTeacher:
    """Scores texts with a few-shot prompted LM. The LM loads on first use, so a stage that only
    needs the teacher's description (the student stage) does not pay for loading it."""

    def __init__(self, spec: PromptSpec, model: Any = None, tokenizer: Any = None):
        self.spec, self.num_labels = spec, len(spec.names)
        self.model, self.tokenizer = model, tokenizer
        self._prefix_kv: Optional[list[tuple[Any, Any]]] = None
        self._cf: Optional[np.ndarray] = None

    def ready(self) -> None:
        """Load the LM (once) and compute the shared prefix's KV cache (once)."""
        if self.model is None:
            t0 = time.perf_counter()
            self.device = choose_device(self.spec.device)
            self.model, self.tokenizer = load_lm(self.spec.model, quantization=self.spec.quantization,
                                                 trust_remote_code=self.spec.trust_remote_code,
                                                 allow_pickle=self.spec.allow_pickle, device=self.device.device,
                                                 dtype=_dtype(self.device))
            log.info("prompted teacher %s loaded in %.1f s", self.spec.model, time.perf_counter() - t0)
        if self._prefix_kv is not None:
            return
        import torch

        tok = self.tokenizer
        self.prefix, self.before, self.after, answer = render(self.spec, tok)
        # A template renders its own special tokens; a plain prompt gets the tokenizer's (e.g. BOS).
        self.prefix_ids = tok(self.prefix, add_special_tokens=not self.spec.chat)["input_ids"]
        if not self.prefix_ids:
            raise DistillError("the prompted teacher's prompt prefix is empty: give teacher.prompt.instruction a text.")
        if len(self.prefix_ids) > self.spec.max_prompt_tokens:
            raise DistillError(f"the few-shot prefix has {len(self.prefix_ids)} tokens, above teacher.prompt."
                               f"max_prompt_tokens={self.spec.max_prompt_tokens}: lower teacher.prompt.shots or "
                               "teacher.max_length, or raise the cap.")
        self.verbalizer_ids = [tok(answer + v, add_special_tokens=False)["input_ids"] for v in self.spec.verbalizers]
        if any(not ids for ids in self.verbalizer_ids):
            raise DistillError(f"a verbalizer tokenizes to nothing: {self.spec.verbalizers}")
        # Labels whose verbalizers share all but the last token share one row of the batch.
        self.conts = list(dict.fromkeys(tuple(ids[:-1]) for ids in self.verbalizer_ids))
        self.keep = max(len(ids) for ids in self.verbalizer_ids)
        self._slice_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        dev = self.model.device
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([self.prefix_ids], device=dev), use_cache=True)
        self._prefix_kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]

    def suffix_ids(self, text: str) -> list[int]:
        self.ready()
        text = _clip(self.tokenizer, text, self.spec.max_length)
        return self.tokenizer(self.before + text + self.after, add_special_tokens=False)["input_ids"]

    def prompt(self, text: str) -> str:
        """The whole prompt for a text, as the LM reads it (up to the answer)."""
        self.ready()
        return self.prefix + self.before + _clip(self.tokenizer, text, self.spec.max_length) + self.after

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """[N, labels]: sum of the log-probabilities of each label's verbalizer tokens after the prompt."""
        self.ready()
        suffixes = [self.suffix_ids(t) for t in texts]
        order = np.argsort([len(s) for s in suffixes], kind="stable")  # less padding per batch
        out = np.zeros((len(texts), self.num_labels), dtype=np.float32)
        t0 = last = time.perf_counter()
        bs = max(1, self.spec.batch_size // len(self.conts))
        for start in range(0, len(texts), bs):
            idx = order[start:start + bs]
            out[idx] = self._score_batch([suffixes[i] for i in idx])
            if time.perf_counter() - last > 60:
                last = time.perf_counter()
                log.info("prompted teacher: %d / %d texts, %.2f s per text", start + len(idx), len(texts),
                         (last - t0) / (start + len(idx)))
        return out

    def content_free_scores(self) -> np.ndarray:
        if self._cf is None:
            self._cf = self.scores([self.spec.content_free])[0]
        return self._cf

    def logits(self, scores: np.ndarray, calibrate: Optional[bool] = None) -> np.ndarray:
        """Teacher logits from scores: log-softmax over labels, after subtracting the content-free
        scores when calibrating."""
        if self.spec.calibrate if calibrate is None else calibrate:
            scores = scores - self.content_free_scores()
        return log_softmax(scores)

    def label_logits(self, texts: Sequence[str]) -> np.ndarray:
        """What distill.soft_labels caches for the student: calibrated per the recipe."""
        return self.logits(self.scores(texts))

    def _score_batch(self, suffixes: list[list[int]]) -> np.ndarray:
        import torch
        from transformers import DynamicCache

        P, K, dev = len(self.prefix_ids), self.keep, self.model.device
        rows = [s + list(c) for s in suffixes for c in self.conts]
        R, L = len(rows), max(len(x) for x in rows)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((R, L), pad, dtype=torch.long)
        mask = torch.zeros((R, P + L), dtype=torch.long)
        mask[:, :P] = 1
        pos = torch.full((R, L), P, dtype=torch.long)
        for r, x in enumerate(rows):  # left padding: every row's answer ends at the last position
            n = len(x)
            ids[r, L - n:] = torch.tensor(x)
            mask[r, P + L - n:] = 1
            pos[r, L - n:] = torch.arange(P, P + n)
        cache = DynamicCache([(k.expand(R, -1, -1, -1), v.expand(R, -1, -1, -1)) for k, v in self._prefix_kv],
                             config=self.model.config)
        kwargs = {"logits_to_keep": K} if self._slice_logits else {}
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                                past_key_values=cache, use_cache=True, **kwargs).logits[:, -K:]
        logp = logits.float().log_softmax(-1).view(len(suffixes), len(self.conts), K, -1)
        out = torch.zeros((len(suffixes), self.num_labels))
        for c, v in enumerate(self.verbalizer_ids):
            u, m = self.conts.index(tuple(v[:-1])), len(v) - 1
            # token t of the verbalizer is predicted at kept position K - 1 - m + t
            at = torch.arange(K - 1 - m, K)
            out[:, c] = logp[:, u, at, torch.tensor(v)].sum(-1).cpu()
        return out.numpy()


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    z = x - x.max(-1, keepdims=True)
    return (z - np.log(np.exp(z).sum(-1, keepdims=True))).astype(np.float32)


def _dtype(device: Any) -> Any:
    import torch

    return torch.bfloat16 if device.bf16 else torch.float16 if device.fp16 else torch.float32


def load_prompted(folder: Path) -> "PromptedTeacher":
    return PromptedTeacher(PromptSpec.load(folder))


def prompted_teacher_stage(ctx: Any, out: Path) -> None:
    """The teacher stage for teacher.kind: prompted: draw the shots, score validation and test
    with and without calibration, write prompted.json, an example prompt and metrics.json."""
    from distill.modeling import count_parameters, num_layers
    from distill.training import classification_metrics

    r, t = ctx.recipe, ctx.recipe.teacher
    data_dir = ctx.data_dir
    names = read_labels(data_dir)
    train = read_split(data_dir, "train")
    val, test = read_split(data_dir, "validation"), read_split(data_dir, "test")
    device = choose_device(r.device)
    t0 = time.perf_counter()
    model, tok = load_lm(t.model, quantization=t.quantization, trust_remote_code=t.trust_remote_code,
                         allow_pickle=t.allow_pickle, device=device.device, dtype=_dtype(device))
    load_s = time.perf_counter() - t0
    if t.quantization != "none" and device.device != "cuda":
        log.warning("teacher.quantization=%s on CPU: bitsandbytes' CPU backend is slow and partial", t.quantization)
    spec = build_spec(t, names, train, tok, r.seed, r.device)
    teacher = PromptedTeacher(spec, model, tok)
    teacher.ready()
    log.info("prompted teacher %s: %d shots, prefix %d tokens, verbalizers %s (%s tokens), %s",
             t.model, len(spec.shots), len(teacher.prefix_ids), spec.verbalizers,
             [len(v) for v in teacher.verbalizer_ids], "chat template" if spec.chat else "plain prompt")

    t1 = time.perf_counter()
    cf = teacher.content_free_scores()
    scored = {name: teacher.scores([row["text"] for row in rows]) for name, rows in (("validation", val), ("test", test))}
    wall = time.perf_counter() - t1
    n_scored = 1 + len(val) + len(test)
    by_mode = {}
    for mode, shift in (("calibrated", cf), ("uncalibrated", 0.0)):
        by_mode[mode] = {name: classification_metrics([row["label"] for row in rows],
                                                      (scored[name] - shift).argmax(-1), len(names))
                         for name, rows in (("validation", val), ("test", test)) if rows}
    chosen = by_mode["calibrated" if spec.calibrate else "uncalibrated"]
    metrics: dict[str, Any] = {
        "kind": "prompted", "model": t.model, "max_length": spec.max_length, "device": device.device,
        "precision": device.precision, "train": {"trained": False, "wall_s": 0.0, "load_s": round(load_s, 1)},
        "parameters": count_parameters(model), "layers": num_layers(model),
        "prompt": {"shots": len(spec.shots), "shots_per_class": t.prompt.shots, "prefix_tokens": len(teacher.prefix_ids),
                   "chat_template": spec.chat, "verbalizers": dict(zip(names, spec.verbalizers)),
                   "verbalizer_tokens": [len(v) for v in teacher.verbalizer_ids]},
        "calibration": {"used": spec.calibrate, "content_free": spec.content_free,
                        "content_free_probs": {n: round(float(x), 4) for n, x in zip(names, np.exp(log_softmax(cf)))},
                        **{mode: {name: {k: m[k] for k in ("accuracy", "macro_f1", "n")} for name, m in ms.items()}
                           for mode, ms in by_mode.items()}},
        "validation": chosen.get("validation", {}), "test": chosen["test"],
        "s_per_text": round(wall / n_scored, 4), "eval_wall_s": round(wall, 1),
        "label_noise": {"flagged": 0, "threshold": r.data.label_noise_threshold, "policy": r.data.label_noise,
                        "note": "not computed for a prompted teacher (it would score every training row)"}}
    log.info("prompted teacher: test accuracy %.4f calibrated, %.4f uncalibrated (%s used); %.3f s per text",
             by_mode["calibrated"]["test"]["accuracy"], by_mode["uncalibrated"]["test"]["accuracy"],
             "calibrated" if spec.calibrate else "uncalibrated", wall / n_scored)
    spec.save(out)
    (out / "prompt_example.txt").write_text(teacher.prompt(test[0]["text"] if test else spec.content_free) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
