"""The recipe: one YAML file that says what to distill, validated up front.

Every field has a default and a description (the unit or the why). Unknown keys are errors. All
problems are reported at once, each with its dotted key, the file and line, and the nearest valid
key for a typo. `--set a.b=value` overrides are applied before validation and named as the source
of their own errors.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from distill import choices
from distill.errors import RecipeError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Splits(_Section):
    train: float = Field(0.7, gt=0, lt=1, description="Fraction of rows for training (when the data has no given splits).")
    validation: float = Field(0.1, ge=0, lt=1, description="Fraction for validation: early stopping, parity gate, tuning.")
    test: float = Field(0.2, gt=0, lt=1, description="Fraction for the test split that every reported figure uses.")

    @model_validator(mode="after")
    def _sums_to_one(self) -> "Splits":
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must sum to 1, got {total:g}")
        return self


class Augment(_Section):
    multiplier: int = Field(0, ge=0, le=20, description="Augmented copies per transfer example; 0 turns augmentation off.")
    ops: list[Literal["swap", "delete", "insert", "mask"]] = Field(
        default_factory=lambda: ["swap", "delete", "insert", "mask"],
        description="Token-level operations to draw from; the teacher relabels every augmented text.")
    rate: float = Field(0.1, gt=0, le=0.5, description="Fraction of a text's tokens each operation touches.")
    max_texts: Optional[int] = Field(100_000, gt=0, description="Augment at most this many source texts (a seeded sample of the training rows and transfer pool when there are more): augmentation widens small sets; copying a large unlabelled pool only multiplies the teacher's labelling time. None = all.")


class Data(_Section):
    source: str = Field("builtin:rotten-tomatoes",
                        description="builtin:NAME, or a CSV/TSV/JSONL/Parquet file, or a folder of split files (names with train, validation/valid/val/dev, test).")
    train: Optional[str] = Field(None, description="Training rows as a file of their own (any name); when set, the splits come from data.train/validation/test and data.source is not used.")
    validation: Optional[str] = Field(None, description="Validation rows as a file (needs data.train); None = carved out of data.train, stratified, as the data report says.")
    test: Optional[str] = Field(None, description="Test rows as a file (needs data.train), scored as given: cleaning never drops a test row for duplication or label conflict; None = carved out of data.train.")
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = Field("auto", description="File format; auto = from the extension.")
    text_column: Optional[str] = Field(None, description="Column holding the text (default: the dataset's own, else 'text').")
    label_column: Optional[str] = Field(None, description="Column holding the label (default: the dataset's own, else 'label').")
    group_by: Optional[str] = Field(None, description="Column whose groups never straddle splits (builtin:rotten-tomatoes: the movie).")
    encoding: str = Field("utf-8", description="Text encoding of the data file.")
    splits: Splits = Field(default_factory=Splits, description="Split fractions (used when the data has no given splits).")
    split_seed: int = Field(0, description="Seed of the split; reported figures name it, claims rest on three of them.")
    max_rows: Optional[int] = Field(None, gt=0, description="Keep at most this many training rows (seeded subsample); None = all.")
    few_shot: Optional[int] = Field(None, gt=0, description="Keep K labelled training examples per class; the rest become unlabelled transfer text.")
    unlabeled: Optional[str] = Field(None, description="Extra in-domain text for the transfer pool: a .txt (one per line) or a file with the text column.")
    transfer_max: Optional[int] = Field(None, gt=0, description="Cap on the transfer pool (teacher inference time grows with it); None = all.")
    min_chars: int = Field(2, ge=1, description="Texts shorter than this (after cleaning) are dropped.")
    max_chars: int = Field(5000, ge=10, description="Texts longer than this are truncated (counted in the data report).")
    label_noise: Literal["keep", "flag", "drop"] = Field(
        "flag", description="Rows where the teacher confidently disagrees with the gold label: keep silently, list them, or drop them from the student's gold-label term.")
    label_noise_threshold: float = Field(0.9, gt=0.5, lt=1, description="Teacher probability above which a disagreement counts as label noise.")
    augment: Augment = Field(default_factory=Augment, description="Augmentation of the transfer pool.")

    @model_validator(mode="after")
    def _split_files_need_train(self) -> "Data":
        if self.train is None and (self.validation is not None or self.test is not None):
            key = "data.test" if self.test is not None else "data.validation"
            raise ValueError(f"{key} is set but data.train is not: give the training rows as data.train too (a file "
                             "of their own), or drop it and put every row in data.source to let distill split")
        return self


class Lora(_Section):
    r: int = Field(8, gt=0, description="LoRA rank.")
    alpha: int = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: Optional[list[str]] = Field(None, description="Module names to adapt; None = peft's default for the architecture.")


class Training(_Section):
    """Fields shared by teacher and student training (Hugging Face Trainer arguments)."""

    epochs: float = Field(1.0, gt=0, description="Passes over the training data.")
    learning_rate: float = Field(5e-5, gt=0, description="Peak AdamW learning rate.")
    batch_size: int = Field(32, gt=0, description="Examples per device step.")
    grad_accum: int = Field(1, ge=1, description="Steps accumulated per optimizer update.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Fraction of steps spent warming up the learning rate.")
    scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="Learning-rate schedule after warm-up.")
    max_length: Optional[int] = Field(None, gt=0, le=4096, description="Tokens per text; None = the data's p95 token length, capped at 256.")
    truncation: Literal["right", "head_tail"] = Field("right", description="How a text longer than max_length is cut: right = its first tokens; head_tail = its first quarter and last three quarters of max_length (long documents: the opening and the ending carry the topic). The export and the bench cut the same way.")
    group_by_length: bool = Field(True, description="Batch texts of similar token length together (the Trainer's length-grouped sampler): less padding, so shorter steps on CPU; batches stay random in order.")
    min_steps: int = Field(250, ge=0, description="At least this many optimizer steps: on a small data set, more epochs than `epochs` are run (early stopping on validation still ends training when it stops improving); 0 = exactly `epochs`.")
    class_weights: Literal["none", "balanced", "auto"] = Field("auto", description="Weight the gold-label cross-entropy per class: balanced = rows / (classes x class rows), for skewed classes; auto = balanced where the largest training class has 3 or more times the rows of the smallest, else none (so none on balanced data). metrics.json records the weights used.")
    early_stopping_patience: int = Field(2, ge=0, description="Evaluations without improvement (validation macro-F1 where classes are skewed, else accuracy) before stopping; 0 = off. The student stops early only with student.keep: best.")
    eval_steps: Optional[int] = Field(None, gt=0, description="Evaluate every N steps; None = once per epoch.")
    dropout: Optional[float] = Field(None, ge=0, lt=1, description="Override the model's hidden/attention dropout; None = keep.")
    contrastive_iterations: int = Field(0, ge=0, description="Before the classification head, train the model's body SetFit's way on sentence pairs of the labelled training rows (2 x iterations pairs per row, cosine-similarity loss; for few labels); 0 = off. Teacher: fine-tuned, all weights; student: init pretrained. Needs the optional setfit install.")


class Prompt(_Section):
    """teacher.kind: prompted: an instruct causal LM labels texts by few-shot prompting (distill/prompted.py)."""

    shots: int = Field(4, ge=0, le=32, description="Labelled training examples per class in the prompt (seeded draw, shuffled); 0 = zero-shot.")
    verbalizers: Optional[dict[str, str]] = Field(
        None, description="Label name -> the word(s) the LM answers with (e.g. {fresh: positive, rotten: negative}); None = the label names. Several tokens score by the sum of their log-probabilities.")
    instruction: str = Field("Classify the text. Answer with one of: {labels}.",
                             description="The prompt's instruction (the system message under a chat template); {labels} becomes the verbalizers.")
    chat_template: bool = Field(True, description="Use the tokenizer's chat template when it has one (else, and when false: a plain 'Text: ... Label: ...' prompt).")
    calibrate: bool = Field(True, description="Contextual calibration (Zhao et al. 2021): subtract the label log-probabilities of a content-free text. metrics.json reports both.")
    content_free: str = Field("N/A", description="The content-free text that calibration measures the LM's label bias on.")
    max_prompt_tokens: int = Field(2048, gt=0, description="Cap on the shared few-shot prefix in tokens (its example texts are cut to teacher.max_length first).")


class Teacher(Training):
    kind: Literal["fine-tuned", "prompted"] = Field(
        "fine-tuned", description="fine-tuned: train a sequence classifier; prompted: an instruct causal LM labels few-shot, untrained (teacher.prompt).")
    model: str = Field("packaged:minilm-l6", description="packaged:NAME, a local model folder, or a Hugging Face Hub id.")
    train: bool = Field(True, description="Fine-tune on the labelled data; false = use an already fine-tuned classifier as is.")
    max_train_samples: Optional[int] = Field(None, gt=0, description="Fine-tune on at most this many labelled rows (big teachers on CPU).")
    quantization: Literal["none", "8bit", "4bit"] = Field("none", description="Load through bitsandbytes and train LoRA adapters (QLoRA); needs lora. kind prompted: 8/4-bit inference, no lora (CUDA).")
    lora: Optional[Lora] = Field(None, description="Train LoRA adapters instead of all weights (works on CPU too).")
    trust_remote_code: bool = Field(False, description="Run model code shipped with the checkpoint. Off unless you trust its source.")
    allow_pickle: bool = Field(False, description="Allow loading .bin (pickle) weights; safetensors only by default.")

    prompt: Prompt = Field(default_factory=Prompt, description="The few-shot prompt of a prompted teacher.")

    @model_validator(mode="after")
    def _quantization_needs_lora(self) -> "Teacher":
        if self.kind == "prompted":
            if self.lora is not None:
                raise ValueError("a prompted teacher (kind: prompted) is not trained: drop the `lora:` section")
        elif self.quantization != "none" and self.lora is None:
            raise ValueError("quantization 8bit/4bit trains LoRA adapters: add a `lora:` section (e.g. `lora: {r: 8}`)")
        return self


class Student(Training):
    init: Literal["teacher-layers", "pretrained", "config"] = Field(
        "teacher-layers", description="teacher-layers: copy chosen teacher layers; pretrained: any smaller model; config: from scratch.")
    layers: list[int] = Field(default_factory=lambda: [0, 5], description="Teacher layers copied into the student (teacher-layers init).")
    model: Optional[str] = Field(None, description="Student model for init=pretrained: packaged:NAME, folder or Hub id.")
    config: Optional[dict[str, Any]] = Field(None, description="Config overrides for init=config (e.g. num_hidden_layers, hidden_size).")
    learning_rate: float = Field(1e-4, gt=0, description="Peak AdamW learning rate.")
    epochs: float = Field(2.0, gt=0, description="Passes over the transfer pool.")
    group_by_length: bool = Field(True, description="Batch texts of similar token length together (the Trainer's length-grouped sampler; a curriculum, where set, orders the batches instead): the default recipe's student stage 1.6x faster, test 81.25% vs 81.35% and validation 79.36% vs 79.10% over 3 seeds (bench/results/ablation-speed.md).")
    keep: Literal["last", "best"] = Field(
        "last", description="The weights each student round ends with: last = after its final step; best = those of the evaluation (each epoch, or every eval_steps) with the best validation score (accuracy, macro-F1 where classes are skewed), which the stage checkpoints anyway. best also ends a round after early_stopping_patience evaluations without improvement (last trains every epoch). best needs validation rows, and the validation figure it reports is then the maximum over evaluations, so judge it on test. metrics.json records the step kept.")

    @field_validator("layers")
    @classmethod
    def _layers_ok(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("needs at least one layer index")
        if any(i < 0 for i in v) or sorted(set(v)) != v:
            raise ValueError(f"layer indices must be distinct, non-negative and increasing, got {v}")
        return v

    @model_validator(mode="after")
    def _init_fields(self) -> "Student":
        if self.init == "pretrained" and not self.model:
            raise ValueError("init=pretrained needs `model:` (packaged:NAME, folder or Hub id)")
        return self


class Curriculum(_Section):
    scorer: Literal["none", "margin", "entropy", "length", "self-paced"] = Field(
        "none", description="Difficulty per example; none = the ablation (plain shuffled sampling).")
    pacing: Literal["linear", "root", "step"] = Field("root", description="How the training pool widens from the easiest fraction to all.")
    start: float = Field(0.3, gt=0, le=1, description="Fraction of the pool (easiest first) used at step 0.")
    ramp: float = Field(0.5, gt=0, le=1, description="Fraction of training after which the whole pool is in use.")


class Distill(_Section):
    temperature: float = Field(2.0, gt=0, description="Softmax temperature T of the KL term (scaled by T^2).")
    losses: dict[str, float] = Field(default_factory=lambda: {"kl": 0.5, "ce": 0.5},
                                     description="Loss name -> weight; names: kl, ce, mse, hidden_mse, hidden_cos, attn_relations (MiniLMv2 self-attention relations of one teacher layer to the student's last layer; runs the teacher beside the student; needs the same word pieces).")
    layer_map: Optional[dict[int, int]] = Field(None, description="Student layer -> teacher layer for the hidden losses; None = the layers a teacher-layers student was copied from, else uniform (a 6-layer student of a 12-layer teacher: 0->1, 1->3, ..., 5->11).")
    curriculum: Curriculum = Field(default_factory=Curriculum, description="Curriculum learning (a train sampler).")
    rounds: int = Field(1, ge=1, le=10, description="Iterative rounds: after each, re-augment where student and teacher disagree most.")
    hard_fraction: float = Field(0.1, gt=0, le=1, description="Fraction of the pool re-augmented and weighted up after a round.")
    relation_layer: int = Field(-1, description="attn_relations: the teacher layer whose relations the student's last layer learns; negative counts from the top (-1 = the last).")
    relation_heads: Optional[int] = Field(None, gt=0, description="attn_relations: relation heads Q, K and V are split into; None = the student's attention heads (both widths must divide by it).")

    @field_validator("losses")
    @classmethod
    def _known_losses(cls, v: dict[str, float]) -> dict[str, float]:
        known = ["kl", "ce", "mse", "hidden_mse", "hidden_cos", "attn_relations"]
        bad = [k for k in v if k not in known]
        if bad:
            hints = [f"{b!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(b, known, 1)) else "") for b in bad]
            raise ValueError(f"unknown loss {', '.join(hints)}; valid: {', '.join(known)}")
        if not v or all(w == 0 for w in v.values()):
            raise ValueError("at least one loss needs a non-zero weight")
        if any(w < 0 for w in v.values()):
            raise ValueError("loss weights must be >= 0")
        return v


class Export(_Section):
    quantize: Literal[choices.QUANTIZE] = Field("dynamic", description="int8 quantization of the student.")
    isa: Literal[choices.ISA] = Field("auto", description="Instruction set to quantize for; auto = detected on the host.")
    optimize: bool = Field(True, description="Run ONNX Runtime's transformer fusions before quantization.")
    opset: int = Field(17, ge=11, le=21, description="ONNX opset.")
    calibration_samples: int = Field(256, gt=0, description="Training texts used to calibrate static int8.")
    per_channel: bool = Field(True, description="Per-channel int8 weight scales (on the default run: 98.1% label agreement vs 94.0% per-tensor, same latency).")
    ort: bool = Field(True, description="Convert to .ort and run ONNX Runtime's mobile usability check.")
    fp32_atol: float = Field(1e-4, gt=0, description="Parity gate: max |logit difference| fp32 ONNX vs PyTorch.")
    int8_min_agreement: float = Field(0.99, gt=0, le=1, description="Parity gate: min label agreement int8 vs PyTorch.")
    vocab: Literal[choices.VOCAB] = Field("full", description="domain: prune the embedding table to the tokens of the run's training, transfer and augmented texts (plus special tokens and every single character), with matching tokenizer files.")
    vocab_top_n: Optional[int] = Field(None, gt=0, description="With vocab: domain, keep only the N most frequent of those tokens.")
    embeddings: Literal[choices.EMBEDDINGS] = Field("int8", description="Word-embedding table precision with dynamic int8: int4 block-quantizes it (ONNX Runtime's GatherBlockQuantized).")
    embeddings_block_size: int = Field(32, ge=16, description="Block size of int4 embeddings (a power of two dividing the hidden size).")
    e2e: bool = Field(True, description="Also write model.e2e.int8.onnx (and .ort): strings in, tokenizer inside the graph (ONNX Runtime Extensions), label and probabilities out.")

    @model_validator(mode="after")
    def _int4_needs_dynamic(self) -> "Export":
        if self.embeddings == "int4" and self.quantize != "dynamic":
            raise ValueError(f"embeddings int4 goes with quantize dynamic (got {self.quantize!r}): 4-bit embeddings are "
                             "block-quantized beside dynamic int8; set quantize: dynamic or embeddings: int8")
        return self


class Target(_Section):
    name: str = Field(..., description="Target name used in reports.")
    cores: Optional[list[int]] = Field(None, description="CPU cores to pin to; None = all.")
    threads: int = Field(..., gt=0, description="Intra-op threads.")
    description: str = Field("", description="What the target stands for.")


class Bench(_Section):
    targets: list[str] = Field(default_factory=lambda: ["cpu", "mobile-1t"], description="Built-in targets (cpu, mobile-2t, mobile-1t) or names from custom_targets.")
    custom_targets: list[Target] = Field(default_factory=list, description="User-defined targets.")
    batch: list[int] = Field(default_factory=lambda: [1], description="Batch sizes measured.")
    seq: Optional[list[int]] = Field(None, description="Sequence lengths of the fixed-shape rows; None = the deployed length (the export's max_length).")
    texts: int = Field(200, ge=0, description="Test texts timed one at a time at their own length, batch 1, no padding (p50/p90 over the texts), as an app runs them; 0 = none.")
    iterations: int = Field(50, gt=0, description="Timed iterations per measurement.")
    warmup: int = Field(10, ge=0, description="Untimed iterations before timing.")
    compare_optimum: bool = Field(True, description="Also measure the student and the teacher exported and int8-quantized optimum's default way, and the TF-IDF floor.")


class Baselines(_Section):
    """Reference models trained on the run's own split and scored on its test split (the baselines stage)."""

    setfit: bool = Field(False, description="Train SetFit (setfit 1.2: contrastive sentence pairs, then a logistic head) on the labelled training rows with teacher.model as its body, and, with student.init: pretrained, SetFit's own DistillationTrainer into student.model on the unlabelled transfer texts; both scored on the test split beside our models. Needs the optional setfit install (`pip install 'edge-distill[setfit]'`).")
    setfit_iterations: int = Field(20, ge=1, description="SetFit's pair iterations: 2 x iterations sentence pairs per labelled row.")
    setfit_distill_steps: int = Field(500, ge=1, description="Steps (batch 16) of SetFit's DistillationTrainer.")


class Tune(_Section):
    trials: int = Field(20, gt=0, description="Optuna trials.")
    timeout: Optional[int] = Field(None, gt=0, description="Stop the search after this many seconds.")
    objective: Literal["student", "teacher"] = Field("student", description="Which model's validation accuracy is maximized.")
    space: dict[str, Any] = Field(default_factory=dict, description="Dotted key -> [low, high] or a list of choices.")


DEFAULT_PROMPTS = ["The movie was", "I expected more from", "The best part of the film is",
                   "The director's new thriller", "This comedy is"]


class CausalLM(_Section):
    """task: causal-lm: a causal LM distilled into a smaller one, token by token (distill/causal_lm.py)."""

    top_k: int = Field(20, ge=1, le=1000, description="Teacher logits cached per token; the KL term uses their distribution renormalized over these k tokens. Changing it reruns the teacher stage.")
    eval_texts: Optional[int] = Field(None, gt=0, description="Perplexity on the first N validation and test texts (small budgets on CPU); None = all.")
    prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS), min_length=1,
                               description="Prompts of the export's check that ONNX greedy generation matches PyTorch's.")
    new_tokens: int = Field(32, ge=2, le=1024, description="Tokens generated per prompt in that check, and per decode measurement in the LM bench.")
    int8_exclude: list[str] = Field(default_factory=lambda: ["down_proj"],
                                    description="MatMul nodes whose name contains one of these stay fp32 in the int8 export: the MLP output projection's input has outlier activations that per-tensor dynamic int8 flattens; add lm_head to keep the head fp32 (6-layer SmolLM2 student, next-token agreement with PyTorch: 0.78 as is, 0.94 with lm_head and int8_embeddings: false, at 1.7x the file size and half the decode speed).")
    int8_embeddings: bool = Field(True, description="Quantize the embedding table (Gather) too; false keeps it fp32.")


class Recipe(_Section):
    name: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Run name: the run lands in models/NAME.")
    seed: int = Field(0, description="Seed for training, sampling and augmentation.")
    device: Literal["auto", "cpu", "cpu-bf16", "cuda"] = Field("auto", description="auto = CUDA when present (bf16 where supported, else fp16), else the CPU: teacher and student trained under bf16 autocast where it has bf16 matrix units (avx512_bf16, AMX), fp32 without them. cpu = CPU fp32 everywhere. cpu-bf16 = CPU bf16 autocast even without the units (emulated there: slower). On a Zen 4 the default recipe's teacher trained 1.5x and its student 1.4x faster under bf16, test accuracy within 0.1 point over 3 seeds (bench/results/ablation-speed.md). Inference passes (soft labels, evaluation, export) stay fp32.")
    task: Literal["classification", "causal-lm"] = Field(
        "classification", description="classification: a sequence classifier; causal-lm: distil a causal LM into a smaller one token by token (section lm; texts from data, labels unused).")
    data: Data = Field(default_factory=Data)
    teacher: Teacher = Field(default_factory=Teacher)
    student: Student = Field(default_factory=Student)
    distill: Distill = Field(default_factory=Distill)
    export: Export = Field(default_factory=Export)
    bench: Bench = Field(default_factory=Bench)
    tune: Tune = Field(default_factory=Tune)
    baselines: Baselines = Field(default_factory=Baselines, description="Reference models beside ours (SetFit).")
    lm: CausalLM = Field(default_factory=CausalLM, description="Settings of task: causal-lm.")

    def cross_problems(self) -> list[tuple[tuple[str, ...], str]]:
        """(key, message) for settings that are valid alone but not together."""
        out = []
        if self.teacher.kind == "prompted":
            if self.student.init != "pretrained":
                out.append((("student", "init"), f"{self.student.init} builds the student from the teacher, but a prompted "
                            "teacher (teacher.kind: prompted) is a causal LM, not a classifier: use student.init: pretrained "
                            "with student.model (e.g. packaged:minilm-l6)"))
            hidden = [k for k in ("hidden_mse", "hidden_cos", "attn_relations") if self.distill.losses.get(k)]
            if hidden:
                out.append((("distill", "losses"), f"{', '.join(hidden)} compare hidden states or attention with the teacher's, "
                            "which a prompted teacher does not provide: use kl and ce"))
        if self.teacher.contrastive_iterations and (self.teacher.kind == "prompted" or self.teacher.lora is not None
                                                    or not self.teacher.train):
            out.append((("teacher", "contrastive_iterations"), "the contrastive phase trains all of a fine-tuned "
                        "teacher's body before its head: it needs teacher.kind: fine-tuned, teacher.train: true and no "
                        "lora; set it to 0 here"))
        if self.student.contrastive_iterations and self.student.init != "pretrained":
            out.append((("student", "contrastive_iterations"), "the contrastive phase trains a pretrained sentence "
                        f"encoder's body before its head; student.init: {self.student.init} builds the student from the "
                        "teacher: use student.init: pretrained with student.model, or set it to 0 here"))
        if self.student.keep == "best" and self.data.splits.validation == 0 and self.data.validation is None:
            out.append((("student", "keep"), "student.keep: best picks each round's weights by their validation score, "
                        "but data.splits.validation is 0 and no data.validation file is given: give validation rows "
                        "(e.g. data.splits.validation: 0.1) or use student.keep: last"))
        if self.baselines.setfit and self.task != "classification":
            out.append((("baselines", "setfit"), "SetFit is a classifier: baselines.setfit needs task: classification"))
        if self.task == "causal-lm":
            out += _causal_lm_problems(self)
        return out


def _causal_lm_problems(r: "Recipe") -> list[tuple[tuple[str, ...], str]]:
    out = []
    if r.teacher.kind == "prompted":
        out.append((("teacher", "kind"), "task: causal-lm distils the teacher LM itself; teacher.kind: prompted is "
                    "for classification (use fine-tuned, with teacher.train: false to distil it as it is)"))
    other = [k for k, w in r.distill.losses.items() if w and k not in ("kl", "ce")]
    if other:
        out.append((("distill", "losses"), f"task: causal-lm has the token-level losses kl and ce only, not "
                    f"{', '.join(other)}"))
    if r.distill.rounds != 1 or r.distill.curriculum.scorer != "none":
        out.append((("distill",), "task: causal-lm trains one round without a curriculum: set distill.rounds: 1 and "
                    "distill.curriculum.scorer: none"))
    if r.export.quantize == "static":
        out.append((("export", "quantize"), "task: causal-lm exports dynamic int8 (or none), not static"))
    if r.data.augment.multiplier:
        out.append((("data", "augment"), "task: causal-lm learns the texts as written, and augmentation (word swaps, "
                    "deletions, insertions, masks) would teach it corrupted text: set data.augment.multiplier: 0 "
                    "(the default recipe turns augmentation on for classification)"))
    return out


# ---------------------------------------------------------------------------------------------
# Loading, overrides, errors


def default_recipe_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("distill.recipes").joinpath("default.yaml")))


def shipped_recipes() -> dict[str, Path]:
    from importlib import resources

    folder = resources.files("distill.recipes")
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Dotted key path -> 1-based line in the YAML text, for error messages."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = path + (str(k.value),)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (str(i),)] = v.start_mark.line + 1
                walk(v, path + (str(i),))

    walk(root, ())
    return lines


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Valid field names of the section that `loc` points into (for 'did you mean')."""
    model: Any = Recipe
    for part in loc:
        field = getattr(model, "model_fields", {}).get(str(part))
        if field is None:
            break
        ann = field.annotation
        inner = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else (inner[0] if inner else None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


# Keys added after run folders existed, each with the condition under which stage input digests (and a
# tune study's fingerprint) leave it out: there the key cannot change what a stage makes, and leaving it
# out keeps the digest an older run recorded, so its stages are reused. recipe.yaml and `recipe show`
# carry every key. A key added to a section a stage hashes goes here, left out at its default.
def _at_default(dotted: str) -> Callable[["Recipe"], bool]:
    def check(r: "Recipe") -> bool:
        *parent, name = dotted.split(".")
        section: Any = r
        for part in parent:
            section = getattr(section, part)
        return getattr(section, name) == type(section).model_fields[name].get_default(call_default_factory=True)
    return check


def _classification(r: "Recipe") -> bool:
    return r.task == "classification"


def _fine_tuned(r: "Recipe") -> bool:
    return r.teacher.kind == "fine-tuned"


DIGEST_OMITS: tuple[tuple[str, Callable[["Recipe"], bool]], ...] = (
    ("task", _classification), ("lm", _classification),  # causal-LM runs came later
    ("baselines", _at_default("baselines")),
    ("data.train", _at_default("data.train")), ("data.validation", _at_default("data.validation")),
    ("data.test", _at_default("data.test")),
    ("data.augment.max_texts", _at_default("data.augment.max_texts")),
    ("teacher.kind", _fine_tuned), ("teacher.prompt", _fine_tuned),  # prompted teachers came later
    *((f"{who}.{key}", _at_default(f"{who}.{key}")) for who in ("teacher", "student")
      for key in ("truncation", "contrastive_iterations")),
    ("student.keep", _at_default("student.keep")),
    ("distill.relation_layer", _at_default("distill.relation_layer")),
    ("distill.relation_heads", _at_default("distill.relation_heads")),
)


def digest_view(recipe: "Recipe", name: str = "") -> Any:
    """The recipe, a section of it or a dotted field ("distill", "data.label_noise") as JSON-able data,
    as stage input digests hash it: without the DIGEST_OMITS keys whose condition holds."""
    value: Any = recipe
    for part in filter(None, name.split(".")):
        value = getattr(value, part)
    data = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
    prefix = f"{name}." if name else ""
    for key, omitted in DIGEST_OMITS:
        if key.startswith(prefix) and isinstance(data, dict) and omitted(recipe):
            *parent, last = key[len(prefix):].split(".")
            node = data
            for part in parent:
                node = node.get(part, {})
            node.pop(last, None)
    return data


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """data[a][b][c] = value for "a.b.c", creating the mappings on the way (what `--set` does)."""
    parts = dotted.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    out = []
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not all(key.split(".")):
            problems.append(f"--set {item!r}: write it as KEY=VALUE with a dotted key, e.g. --set student.epochs=3")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    if problems:
        raise RecipeError(problems, "command line")
    return out


def load_recipe(path: Path | str | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raise RecipeError listing every problem."""
    path = Path(path) if path is not None else default_recipe_path()
    shipped = shipped_recipes()
    if not path.is_file() and str(path) in shipped:  # `distill run few-shot`
        path = shipped[str(path)]
    source = str(path)
    if not path.is_file():
        raise RecipeError([f"no such file (shipped recipes: {', '.join(sorted(shipped_recipes()))}; "
                           "`distill recipe list` shows them)"], source)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError([f"not UTF-8 text (byte {e.start}); save the recipe as UTF-8"], source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise RecipeError([f"{where}not valid YAML ({getattr(e, 'problem', None) or e})"], source) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError([f"the top level must be a mapping of sections (name, data, teacher, ...), got {type(data).__name__}"], source)
    lines = _key_lines(text)
    overridden: set[tuple[str, ...]] = set()
    for key, value in parse_overrides(overrides or []):
        set_dotted(data, key, value)
        overridden.add(tuple(key.split(".")))
    return validate_dict(data, source, lines, overridden)


def validate_dict(data: dict, source: str = "<recipe>", lines: dict | None = None,
                  overridden: set | None = None) -> Recipe:
    lines = lines or {}
    overridden = overridden or set()

    def where(loc: tuple[str, ...]) -> str:
        if any(loc[: len(o)] == o for o in overridden):
            return "--set: "
        if loc in lines:
            return f"line {lines[loc]}: "
        if loc[:-1] in lines:
            return f"line {lines[loc[:-1]]}: "
        return ""

    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            dotted = ".".join(loc) or "(top level)"
            if err["type"] == "extra_forbidden":
                valid = _fields_at(loc[:-1])
                near = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.6)
                hint = f" Did you mean {near[0]!r}?" if near else ""
                problems.append(f"{where(loc)}{dotted}: unknown key.{hint} Valid keys here: {', '.join(valid)}.")
            else:
                msg = err["msg"].removeprefix("Value error, ")
                got = err.get("input")
                shown = "" if isinstance(got, dict) or err["type"] == "missing" else f" (got {got!r})"
                problems.append(f"{where(loc)}{dotted}: {msg}{shown}")
        raise RecipeError(problems, source) from None
    problems = [f"{where(loc)}{'.'.join(loc)}: {msg}" for loc, msg in recipe.cross_problems()]
    if problems:
        raise RecipeError(problems, source)
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML, every key with its value (defaults filled in)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _type_name(ann: Any) -> str:
    import typing

    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Literal:
        return " / ".join(str(a) for a in args)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return " / ".join(_type_name(a) for a in inner) + (" / null" if len(inner) < len(args) else "")
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(ann, "__name__", str(ann))


def schema_markdown() -> str:
    """The recipe reference as Markdown, generated from the schema so it cannot drift."""
    out = ["| key | type | default | description |", "|---|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            key = f"{prefix}{name}"
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, key + ".")
                continue
            default = field.get_default(call_default_factory=True)
            desc = (field.description or "").replace("|", "\\|")
            out.append(f"| `{key}` | {_type_name(ann)} | `{default!r}` | {desc} |")

    walk(Recipe, "")
    return "\n".join(out)
