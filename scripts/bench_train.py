"""LoRA fine-tuning throughput on SmolLM2-135M-Instruct: delift_jax vs Hugging Face PyTorch + PEFT, same settings,
same batches, in one run.

    python scripts/bench_train.py                      # 16 ifbench examples, batch 4 x 256 tokens, 3 timed steps
    python scripts/bench_train.py --steps 8 --batch-size 8

Settings shared by both sides: float32; LoRA r=8, alpha=16, dropout 0.05 on q/k/v/o/gate/up/down projections;
AdamW (lr 2e-4, betas 0.9/0.999, eps 1e-8, no weight decay), global-norm clipping at 1.0; loss = mean NLL over
the response tokens and final EOS only (prompt and padding masked: labels -100 on the torch side).
Batches are the ones our data plan builds (DESIGN 1.1 template, responses cut to 400 characters so they fit,
contexts cut from the left), every batch padded to ``--max-length``: both sides process identical token arrays.
tokens/s counts non-padding tokens per second of optimizer steps (forward, backward, update), after
``--warmup`` untimed steps (they include JAX compilation). The first step's loss is printed for both sides: with
B = 0 adapters it is the base model's loss, so the two must agree (a correctness check of the comparison).

The last line is one JSON object with jax_tok_per_s, torch_tok_per_s and ratio (jax / torch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (compilation)")
    parser.add_argument("--only", choices=("all", "jax", "torch"), default="all")
    return parser.parse_args(argv)


LORA = dict(rank=8, alpha=16.0, dropout=0.05)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LR = 2e-4


def build_batches(tokenizer, args):
    from delift_jax.data import Example, load_builtin
    from delift_jax.train.data import encode_examples, fixed_shape, make_batch, plan_steps

    examples = [Example(e.prompt, e.response[:400]) for e in load_builtin("ifbench", limit=args.examples)]
    sequences = encode_examples(tokenizer, examples, args.max_length)
    n_steps = args.warmup + args.steps
    plan = plan_steps([len(s) for s in sequences], args.batch_size, 1, seed=0, max_steps=n_steps)
    shape = fixed_shape(sequences, args.max_length)
    return [make_batch(sequences, rows, 1, args.batch_size, args.max_length,
                       pad_id=int(tokenizer.eos_token_id), shape=shape) for rows in plan]


def bench_jax(model, batches, args):
    from flax import nnx

    from delift_jax.sharding import data_mesh
    from delift_jax.train.lora import LoRAConfig, apply_lora
    from delift_jax.train.optim import make_optimizer
    from delift_jax.train.step import init_state, make_train_step, shard_batch, split_model

    mesh = data_mesh()
    lora_model = apply_lora(nnx.clone(model), LoRAConfig(LORA["rank"], LORA["alpha"], LORA["dropout"], TARGETS))
    split, params, frozen = split_model(lora_model, nnx.LoRAParam)
    optimizer = make_optimizer(LR, len(batches), schedule="constant", max_grad_norm=1.0)
    state = init_state(params, optimizer, 0, mesh)
    step = make_train_step(split, optimizer, frozen, mesh, dropout=True)
    losses, times = [], []
    for batch in batches:
        start = time.perf_counter()
        state, metrics = step(state, shard_batch(batch, mesh))
        losses.append(float(metrics["loss"]))  # blocks until the step is done
        times.append(time.perf_counter() - start)
    return losses, times


def bench_torch(model_dir, batches, args):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                            target_modules=list(TARGETS), task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    losses, times = [], []
    for batch in batches:
        tokens = torch.as_tensor(batch["tokens"][0], dtype=torch.long)
        mask = torch.as_tensor(batch["valid"][0], dtype=torch.long)
        labels = torch.full_like(tokens, -100)
        for row in range(tokens.shape[0]):
            keep = batch["score_valid"][0, row]
            pos = torch.as_tensor(batch["score_index"][0, row][keep] + 1, dtype=torch.long)
            labels[row, pos] = torch.as_tensor(batch["score_target"][0, row][keep], dtype=torch.long)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=tokens, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        times.append(time.perf_counter() - start)
    return losses, times


def main(argv=None):
    args = parse_args(argv)
    from delift_jax.models import load_model
    from delift_jax.models.gguf import convert_gguf_to_hf_directory
    from delift_jax.models.loading import resolve_model_path

    path = resolve_model_path(args.model)
    model_dir = convert_gguf_to_hf_directory(path) if path.is_file() else path
    model, tokenizer, _ = load_model(model_dir)
    batches = build_batches(tokenizer, args)
    timed = batches[args.warmup:]
    tokens = sum(int(b["valid"].sum()) for b in timed)
    shape = batches[0]["tokens"].shape[1:]
    print(f"{len(timed)} timed steps of batch {shape[0]} x {shape[1]} tokens ({tokens} non-padding tokens), "
          f"warmup {args.warmup}; LoRA r={LORA['rank']} alpha={LORA['alpha']} dropout={LORA['dropout']}")

    rows, result = [], {}
    for name, fn, source in (("jax", bench_jax, model), ("torch", bench_torch, model_dir)):
        if args.only not in ("all", name):
            continue
        losses, times = fn(source, batches, args)
        seconds = sum(times[args.warmup:])
        result[f"{name}_tok_per_s"] = round(tokens / seconds, 1)
        rows.append((name, losses[0], losses[-1], sum(times[:args.warmup]), statistics.median(times[args.warmup:]),
                     tokens / seconds))
    print(f"{'side':<6} {'loss@1':>8} {'loss@end':>9} {'warmup s':>9} {'step s (median)':>16} {'tok/s':>8}")
    for name, first, last, warm, med, tps in rows:
        print(f"{name:<6} {first:>8.4f} {last:>9.4f} {warm:>9.1f} {med:>16.2f} {tps:>8.1f}")
    if len(rows) == 2:
        result["ratio"] = round(result["jax_tok_per_s"] / result["torch_tok_per_s"], 3)
        result["first_loss_abs_diff"] = abs(rows[0][1] - rows[1][1])
    result.update(steps=len(timed), batch=shape[0], length=shape[1], tokens=tokens)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
