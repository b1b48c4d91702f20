"""The VideoSearch-R1 task for the SFT and GRPO loops, built only from vsr_model pieces: the policy
(vsr_model.policy), SQR (vsr_model.sqr), the prompt protocol and parser (vsr_model.protocol), the rewards
(vsr_model.rewards) and the search engine (vsr_model.engine). Nothing here re-implements them.
Its examples are read by ``vsr_examples``.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vsr_train.config import ConfigError, GRPOConfig, ModelConfig, SFTConfig
from vsr_train.group_retrieval import group_refined_top1
from vsr_train.grpo_math import token_logprobs
from vsr_train.models import LoadedModel
from vsr_train.runtime import DistInfo, gathered_parameters, load_deepspeed_json, zero_stage
from vsr_train.tasks import Rollouts, split_rows
from vsr_train.vsr_examples import Example, read_examples

log = logging.getLogger(__name__)

SQR_PREFIXES = ("sqr.",)
# The composite policy's frame projector starts from random weights (the Qwen families' mergers do not).
CONNECTOR_PREFIXES = ("projector.",)


# ----------------------------------------------------------------------------------------------------------
# Policy
# ----------------------------------------------------------------------------------------------------------


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _engine_dims(engine_dir: str) -> tuple[int, int]:
    meta = json.loads((Path(engine_dir) / "engine.json").read_text())
    return int(meta["embed_dim"]), int(meta["query_input_dim"])


def load_vsr_policy(
    cfg: ModelConfig, ds_config: dict[str, Any], precision: str, engine_dir: str | None = None
) -> LoadedModel:
    """A saved vsr policy (a folder with vsr_policy.json), or a fresh composite policy over an HF LLM
    (``name_or_path``; the default SmolLM2 when unset) with SQR heads sized for the engine.

    Every rank builds the whole policy; under ZeRO-3 ``deepspeed.initialize`` then partitions it. No
    transformers ``HfDeepSpeedConfig`` is created: the rollout runs on whole weights without collectives
    (runtime.whole_model), which Hugging Face generate's ZeRO-3 default (synced_gpus) would contradict."""
    from vsr_model.policy import load_policy
    from vsr_model.policy.base import POLICY_CONFIG_FILE
    from vsr_model.policy.composite import CompositePolicyConfig, CompositeVideoPolicy
    from vsr_model.sqr import SQRConfig

    path = Path(cfg.name_or_path) if cfg.name_or_path else None
    if path is not None and (path / POLICY_CONFIG_FILE).is_file():
        policy = load_policy(path)
    else:
        if engine_dir is None:
            raise ValueError("a fresh vsr_policy needs data.engine_dir to size its SQR heads")
        embed_dim, query_input_dim = _engine_dims(engine_dir)
        options = dict(cfg.policy_options)
        composite = CompositePolicyConfig.from_dict(
            {
                "llm": cfg.name_or_path,
                "freeze_frame_encoder": cfg.freeze_vision_tower,
                **options.pop("composite", {}),
            }
        )
        sqr = SQRConfig.from_dict(
            {"embed_dim": embed_dim, "query_input_dim": query_input_dim, **options.pop("sqr", {})}
        )
        if options:
            raise ValueError(
                f"unknown model.policy_options keys {sorted(options)}; expected 'composite', 'sqr'"
            )
        policy = CompositeVideoPolicy.build(composite, sqr)
    if precision == "bf16" and hasattr(policy, "frame_encoder"):
        # DeepSpeed's bf16 casts every parameter but no buffer; the composite's frame encoder (a CNN) takes
        # float32 pixels and keeps float32 batch-norm statistics, so it would fail on its first frame.
        raise ConfigError(
            "deepspeed.precision bf16 is not supported for the composite video policy: DeepSpeed casts its "
            "frame encoder's parameters to bf16 while the encoder's pixels and batch-norm statistics stay "
            "float32; use precision fp32 (Qwen-VL policies and plain causal LMs train in bf16)"
        )
    if cfg.freeze_vision_tower:
        for name, param in policy.named_parameters():
            if name.startswith("frame_encoder.") or ".visual." in name or name.startswith("visual."):
                param.requires_grad_(False)
        # A frozen tower must also stay in inference mode (BatchNorm statistics, dropout) while the
        # training loop switches the rest of the policy to train mode.
        for name, module in policy.named_modules():
            if name in ("frame_encoder", "visual") or name.endswith(".visual"):
                module.register_forward_pre_hook(_force_eval)
    if cfg.gradient_checkpointing:
        backbone = getattr(policy, "lm", None) or getattr(policy, "model", None)
        if backbone is None or not hasattr(backbone, "gradient_checkpointing_enable"):
            raise ValueError(f"{type(policy).__name__} exposes no HF backbone for gradient checkpointing")
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return LoadedModel(
        model=policy,
        tokenizer=None,
        sqr_prefixes=SQR_PREFIXES,
        connector_prefixes=CONNECTOR_PREFIXES,
        save_fn=_save_policy,
    )


def _force_eval(module: torch.nn.Module, _inputs) -> None:
    if module.training:
        module.eval()


def _save_policy(engine, folder: Path, is_main: bool) -> None:
    """The policy folder (vsr_model.policy.load_policy reads it) on rank 0. Collective: under ZeRO-3 every
    rank gathers the whole weights, then the policy's own atomic save writes them."""
    with gathered_parameters(engine) as policy:
        if is_main:
            policy.save_pretrained(folder)


# ----------------------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------------------


class _SearchContext:
    """Engine (frozen, on the training device), corpus and examples of one run."""

    def __init__(self, data, device: torch.device) -> None:
        from vsr_model.corpus import Corpus
        from vsr_model.engine.base import SearchEngine

        self.examples = read_examples(data.path)
        self.engine = SearchEngine.load(data.engine_dir)
        if hasattr(self.engine, "to"):
            self.engine.to(device)
        for module in vars(self.engine).values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False)
        self.corpus = Corpus.from_jsonl(data.corpus, split=data.corpus_split)
        unknown = sorted({e.retrieved for e in self.examples} - set(self.corpus.ids))
        if unknown:
            raise ValueError(
                f"{len(unknown)} retrieved videos of {data.path} are not in {data.corpus}: {unknown[:5]}"
            )

    def negatives(self, examples: Sequence[Example], retrieved: Sequence[str], num_negatives: int, seed: int):
        """(positive (B, D), negatives (B, n, D)); a fresh seeded sampler per call keeps resumes exact."""
        from vsr_model.sqr import NegativeSampler

        sampler = NegativeSampler(
            self.engine.video_ids, num_negatives, self.engine.video_embeddings, seed=seed
        )
        pos, neg, _ = sampler.sample(
            [e.video_id for e in examples], list(retrieved), [e.hard_negatives for e in examples]
        )
        return pos, neg


def _top1(hits: Sequence[Any], example: Example) -> str:
    if not hits:
        raise RuntimeError(f"the engine returned no video for query {example.query_id!r} (all excluded?)")
    return hits[0].video_id


def policy_token_logprobs(model: torch.nn.Module, batch, temperature: float) -> torch.Tensor:
    """log p(x_{t+1} | x_{<=t}) of a PolicyBatch under the policy (video embedded), [B, L-1]. ``model`` is
    the DeepSpeed engine (or a bare policy): its forward fetches ZeRO-3 partitioned weights."""
    batch = batch.to(_unwrap(model).device)
    logits = model(batch, use_cache=False).logits
    return token_logprobs(logits[:, :-1], batch.input_ids[:, 1:], temperature)


# ----------------------------------------------------------------------------------------------------------
# Stage 1
# ----------------------------------------------------------------------------------------------------------


class VideoSearchSFTTask:
    """CE on the assistant turn + lambda * InfoNCE(refined query; gt video vs negatives)."""

    def __init__(self, cfg: SFTConfig, loaded: LoadedModel, dist: DistInfo) -> None:
        self.cfg = cfg
        self.policy = loaded.model
        self.ctx = _SearchContext(cfg.data, dist.device)
        self.num_examples = len(self.ctx.examples)
        self._calls = 0

    def batch(self, indices: list[int], device: torch.device) -> dict[str, Any]:
        from vsr_model.policy import VerifyInput
        from vsr_model.protocol import format_response

        examples = [self.ctx.examples[i] for i in indices]
        items = [VerifyInput(e.query, self.ctx.corpus.clip(e.retrieved)) for e in examples]
        targets = [format_response(e.rationale, e.matched, e.span if e.matched else None) for e in examples]
        encoded = self.policy.encode(items, targets).to(device)
        self._calls += 1
        return {
            "policy_batch": encoded,
            "examples": examples,
            "input_ids": encoded.input_ids,
            "seed": indices[0],
        }

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        from vsr_model.sqr import info_nce, latent_rollout, refined_query

        policy = _unwrap(model)
        encoded, examples = batch["policy_batch"], batch["examples"]
        # The model's (engine's) forward keeps the KV cache the latent rollout continues from.
        out = model(encoded, use_cache=True)
        logits = out.logits[:, :-1].float()
        targets = encoded.input_ids[:, 1:]
        mask = encoded.completion_mask[:, 1:]
        ce = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
        parts = {"loss/ce": float(ce.detach())}
        loss = ce
        if self.cfg.infonce_weight > 0:
            latents = latent_rollout(policy, encoded, state=out.state).latents
            query, _ = refined_query(policy.sqr, self.ctx.engine, [e.query for e in examples], latents)
            pos, neg = self.ctx.negatives(
                examples,
                [e.retrieved for e in examples],
                self.cfg.num_negatives,
                self.cfg.seed * 7919 + batch["seed"],
            )
            nce = info_nce(query, pos.to(query.device), neg.to(query.device), self.cfg.infonce_temperature)
            parts["loss/infonce"] = float(nce.detach())
            loss = ce + self.cfg.infonce_weight * nce
        return loss, parts


# ----------------------------------------------------------------------------------------------------------
# Stage 2
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Turn:
    trajectory: int
    item: Any
    token_ids: list[int]
    shown: str = ""


@dataclass
class _MicroBatch:
    encoded: Any  # vsr_model.policy.PolicyBatch
    turns: list[_Turn]
    examples: list[Example]
    shown: list[str]


class VideoSearchGRPOTask:
    """G sampled trajectories per prompt, scored with vsr_model.rewards.

    single_turn: one verify turn on the example's pre-retrieved top-1 (the paper's released setting).
    multi_turn:  live retrieval: the group's original query retrieves its first video; after a rejection
                 with <REFINE>, SQR refines each trajectory's query and the group's refined queries search
                 again together (engine.refine_group, one candidate pool per group; never showing a
                 trajectory a video twice when rollout.exclude_seen_videos) for up to
                 ``rollout.max_turns`` turns. Every turn is a fresh prompt and a row of the loss; a
                 trajectory's reward is the mean of its turns' rewards.

    The rollout calls the policy's own methods (generation, latent rollout), so under ZeRO-3 the GRPO loop
    runs it inside runtime.whole_model (``rollout_on_whole_model``): whole weights, no collectives.
    """

    rollout_on_whole_model = True

    def __init__(self, cfg: GRPOConfig, loaded: LoadedModel, dist: DistInfo) -> None:
        self.cfg = cfg
        self.ctx = _SearchContext(cfg.data, dist.device)
        self.num_prompts = len(self.ctx.examples)
        self.reward_config = cfg.rewards
        # The SQR heads get no policy-gradient signal (the latents are not sampled tokens); they either stay
        # frozen (the authors' setting) or keep training on the retrieval objective (auxiliary_loss).
        loaded.model.sqr.requires_grad_(cfg.rollout.train_sqr_heads)
        if cfg.rollout.train_sqr_heads and zero_stage(load_deepspeed_json(cfg.deepspeed.config)) == 3:
            # Only ranks whose micro-batch holds a <REFINE> run the auxiliary forward; under ZeRO-3 every
            # forward gathers parameters collectively, so the other ranks would leave it waiting.
            raise ConfigError(
                "rollout.train_sqr_heads is not supported under ZeRO-3 (the retrieval objective runs on the "
                "ranks that sampled a <REFINE> only); use deepspeed.config zero1 or zero2, or train the SQR "
                "heads in Stage 1"
            )
        self.truncated = 0

    def _generate(self, policy, items: list[Any]) -> tuple[list[list[int]], list[str]]:
        """Sample one completion per item. A sampled video placeholder token (it cannot be re-encoded
        as text: the prompt builder would expect a frame for it) ends the completion there; such
        truncations are counted in ``self.truncated``."""
        from vsr_model.policy import GenerationSettings

        s = self.cfg.grpo
        settings = GenerationSettings(
            max_new_tokens=s.max_completion_tokens, do_sample=True, temperature=s.temperature, top_p=s.top_p
        )
        generation = policy.generate(policy.encode(items), settings)
        placeholder = getattr(policy, "frame_token_id", None)
        token_ids, texts = [], []
        for ids, text in zip(generation.token_ids, generation.texts, strict=True):
            if placeholder is not None and placeholder in ids:
                ids = ids[: ids.index(placeholder)]
                text = policy.tokenizer.decode(ids, skip_special_tokens=False)
                self.truncated += 1
            token_ids.append(list(ids))
            texts.append(text)
        return token_ids, texts

    def _refine(
        self,
        policy,
        turns: list[_Turn],
        queries: list[str],
        examples: list[Example],
        shown: list[str],
        seed: int,
    ):
        """Refined query embeddings for turns that emitted <REFINE> and their retrieval rewards."""
        from vsr_model.rewards import retrieval_reward
        from vsr_model.sqr import latent_rollout, refined_query

        encoded = policy.encode([t.item for t in turns], [t.token_ids for t in turns]).to(policy.device)
        with torch.no_grad():
            latents = latent_rollout(policy, encoded).latents
            refined, _ = refined_query(policy.sqr, self.ctx.engine, queries, latents)
            original = self.ctx.engine.encode_query(queries)
            pos, neg = self.ctx.negatives(examples, shown, policy.sqr.config.num_negatives, seed)
            reward = retrieval_reward(
                refined.float().cpu(),
                original.float().cpu(),
                pos,
                neg,
                self.reward_config.retrieval_kind,
                self.reward_config.temperature,
            )
        return refined.float().cpu(), reward

    def rollout(self, model, indices, settings, num_micro_batches, device, synced) -> Rollouts:
        from vsr_model.policy import VerifyInput
        from vsr_model.protocol import parse_response
        from vsr_model.rewards import score_response

        if synced:
            raise ValueError(
                "the vsr_policy rollout runs on whole weights (runtime.whole_model), not on ZeRO-3 shards"
            )
        policy = _unwrap(model)
        group, cfg = settings.group_size, self.cfg
        examples = [self.ctx.examples[i] for i in indices for _ in range(group)]
        n = len(examples)
        multi = cfg.rollout.mode == "multi_turn"
        # retrieval: query encoding + index search; refine: SQR latent rollout + refined-query encoding
        # (+ the retrieval reward's scoring); reward: parsing and the other reward terms.
        seconds = {"video_decode": 0.0, "generation": 0.0, "retrieval": 0.0, "refine": 0.0, "reward": 0.0}
        shown = [e.retrieved for e in examples]
        if multi:
            # The group's original query retrieves its first video (one search per prompt).
            start = time.perf_counter()
            with torch.no_grad():
                originals = self.ctx.engine.encode_query([self.ctx.examples[i].query for i in indices])
            originals = originals.detach().float().cpu()
            first = self.ctx.engine.search(originals, 1)
            shown = [_top1(first[i // group], examples[i]) for i in range(n)]
            seconds["retrieval"] += time.perf_counter() - start
        seen = [[video] for video in shown]  # per trajectory, in the order shown
        turn_rewards: list[list[dict[str, float]]] = [[] for _ in range(n)]
        all_turns: list[_Turn] = []
        active = list(range(n))
        for turn in range(1, (cfg.rollout.max_turns if multi else 1) + 1):
            start = time.perf_counter()
            items = [VerifyInput(examples[i].query, self.ctx.corpus.clip(shown[i])) for i in active]
            seconds["video_decode"] += time.perf_counter() - start
            start = time.perf_counter()
            token_ids, texts = self._generate(policy, items)
            seconds["generation"] += time.perf_counter() - start
            start = time.perf_counter()
            parsed = [parse_response(t) for t in texts]
            turns = [
                _Turn(i, item, ids, shown[i]) for i, item, ids in zip(active, items, token_ids, strict=True)
            ]
            all_turns.extend(turns)
            refine_rows = [k for k, p in enumerate(parsed) if p.refine]
            retrieval = [0.0] * len(active)
            refined = None
            if refine_rows:
                refine_start = time.perf_counter()
                rows = [turns[k] for k in refine_rows]
                refined, reward = self._refine(
                    policy,
                    rows,
                    [examples[t.trajectory].query for t in rows],
                    [examples[t.trajectory] for t in rows],
                    [shown[t.trajectory] for t in rows],
                    seed=cfg.seed * 7919 + indices[0] * 31 + turn,
                )
                for k, value in zip(refine_rows, reward.tolist(), strict=True):
                    retrieval[k] = value
                seconds["refine"] += time.perf_counter() - refine_start
                start += time.perf_counter() - refine_start  # keep refine out of the reward time
            for k, i in enumerate(active):
                label = shown[i] == examples[i].video_id
                breakdown = score_response(
                    parsed[k], label, examples[i].span, self.reward_config, retrieval[k]
                )
                turn_rewards[i].append(breakdown.as_dict())
            seconds["reward"] += time.perf_counter() - start
            if not multi:
                break
            # Trajectories that rejected the video and refined search again; the others stop here.
            next_active = [i for k, i in enumerate(active) if parsed[k].not_matched and k in refine_rows]
            if not next_active or turn == cfg.rollout.max_turns:
                break
            start = time.perf_counter()
            row_of = {turns[k].trajectory: j for j, k in enumerate(refine_rows)}
            for prompt in sorted({i // group for i in next_active}):
                rows = [i for i in next_active if i // group == prompt]
                videos = group_refined_top1(
                    self.ctx.engine,
                    originals[prompt : prompt + 1],
                    refined[[row_of[i] for i in rows]],
                    [seen[i] for i in rows],
                    cfg.rollout.exclude_seen_videos,
                )
                for i, video in zip(rows, videos, strict=True):
                    shown[i] = video
                    seen[i].append(video)
            seconds["retrieval"] += time.perf_counter() - start
            active = next_active

        totals = torch.tensor([sum(r["total"] for r in rs) / len(rs) for rs in turn_rewards])
        components = {
            key: torch.tensor([sum(r[key] for r in rs) / len(rs) for rs in turn_rewards])
            for key in turn_rewards[0][0]
            if key != "total"
        }
        components["turns"] = torch.tensor([float(len(rs)) for rs in turn_rewards])
        components["placeholder_truncations"] = torch.tensor([float(self.truncated)])
        self.truncated = 0
        # Rows grouped by trajectory so a trajectory's turns share micro-batches where possible.
        all_turns.sort(key=lambda t: t.trajectory)
        micro_batches, masks = [], []
        for rows in split_rows(len(all_turns), num_micro_batches):
            chunk = all_turns[rows]
            encoded = policy.encode([t.item for t in chunk], [t.token_ids for t in chunk])
            micro_batches.append(
                _MicroBatch(
                    encoded=encoded,
                    turns=list(chunk),
                    examples=[examples[t.trajectory] for t in chunk],
                    shown=[t.shown for t in chunk],
                )
            )
            masks.append(encoded.completion_mask[:, 1:].to(torch.int64))
        return Rollouts(
            micro_batches=micro_batches,
            loss_masks=masks,
            rewards=totals,
            row_trajectory=torch.tensor([t.trajectory for t in all_turns]),
            reward_components=components,
            seconds=seconds,
            num_prompts=len(indices),
        )

    def logprobs(self, model: torch.nn.Module, micro_batch: _MicroBatch, temperature: float) -> torch.Tensor:
        return policy_token_logprobs(model, micro_batch.encoded, temperature)

    def auxiliary_loss(
        self, model: torch.nn.Module, micro_batch: _MicroBatch
    ) -> tuple[torch.Tensor, dict] | None:
        """With ``rollout.train_sqr_heads``: lambda * InfoNCE of the refined queries of this micro-batch's
        turns that emitted <REFINE> (gt video vs the shown video, hard negatives, random fill)."""
        from vsr_model.sqr import info_nce, latent_rollout, refined_query

        if not self.cfg.rollout.train_sqr_heads:
            return None
        policy = _unwrap(model)
        refine_id = policy.refine_token_id
        rows = [k for k, t in enumerate(micro_batch.turns) if refine_id in t.token_ids]
        if not rows:
            return None
        turns = [micro_batch.turns[k] for k in rows]
        examples = [micro_batch.examples[k] for k in rows]
        encoded = policy.encode([t.item for t in turns], [t.token_ids for t in turns]).to(policy.device)
        latents = latent_rollout(policy, encoded).latents
        query, _ = refined_query(policy.sqr, self.ctx.engine, [e.query for e in examples], latents)
        seed = self.cfg.seed * 7919 + zlib.crc32("|".join(e.query_id for e in examples).encode())
        pos, neg = self.ctx.negatives(
            examples, [micro_batch.shown[k] for k in rows], policy.sqr.config.num_negatives, seed
        )
        nce = info_nce(query, pos.to(query.device), neg.to(query.device), policy.sqr.config.temperature)
        return self.cfg.rollout.sqr_infonce_weight * nce, {"loss/sqr_infonce": float(nce.detach())}
