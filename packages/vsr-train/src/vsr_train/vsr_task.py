"""The VideoSearch-R1 task for the SFT and GRPO loops, built only from vsr_model pieces: the policy
(vsr_model.policy), SQR (vsr_model.sqr), the prompt protocol and parser (vsr_model.protocol), the rewards
(vsr_model.rewards) and the search engine (vsr_model.engine). Nothing here re-implements them.
Its examples are read by ``vsr_examples``.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vsr_train.config import ConfigError, GRPOConfig, SFTConfig
from vsr_train.grpo_math import token_logprobs
from vsr_train.placement import place_frozen
from vsr_train.policy_loader import LoadedModel
from vsr_train.runtime import DistInfo, load_deepspeed_json, zero_stage
from vsr_train.tasks import Rollouts, split_rows
from vsr_train.vsr_examples import Example, read_examples

log = logging.getLogger(__name__)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


# ----------------------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------------------


class _SearchContext:
    """Engine (frozen, on the training device), corpus and examples of one run."""

    def __init__(self, data, device: torch.device) -> None:
        from vsr_model.corpus import Corpus
        from vsr_model.engine.base import SearchEngine

        self.examples = read_examples(data.path)
        self.engine = place_frozen(SearchEngine.load(data.engine_dir), device)
        self.corpus = Corpus.from_jsonl(data.corpus, split=data.corpus_split)
        unknown = sorted({e.retrieved for e in self.examples} - set(self.corpus.ids))
        if unknown:
            raise ValueError(
                f"{len(unknown)} retrieved videos of {data.path} are not in {data.corpus}: {unknown[:5]}"
            )

    def negatives(self, examples: Sequence[Example], retrieved: Sequence[str], infonce, seed: int):
        """(positive (B, D), negatives (B, n, D)) for InfoNCEConfig `infonce`; a fresh seeded sampler per
        call keeps resumes exact."""
        from vsr_model.sqr import NegativeSampler

        sampler = NegativeSampler(
            self.engine.video_ids,
            infonce.num_negatives,
            self.engine.video_embeddings,
            ambiguity_threshold=infonce.ambiguity_threshold,
            seed=seed,
        )
        pos, neg, _ = sampler.sample(
            [e.video_id for e in examples], list(retrieved), [e.hard_negatives for e in examples]
        )
        return pos, neg


def policy_token_logprobs(model: torch.nn.Module, batch, temperature: float) -> torch.Tensor:
    """log p(x_{t+1} | x_{<=t}) of a PolicyBatch's completion tokens under the policy (video embedded),
    [B, L-1], 0 at prompt and padding positions (the loss masks them). The LM head runs on completion
    positions only. ``model`` is the DeepSpeed engine (or a bare policy): its forward fetches ZeRO-3
    partitioned weights."""
    policy = _unwrap(model)
    batch = batch.to(policy.device)
    hidden = model(batch, use_cache=False, logits=False).hidden
    logits, targets = policy.completion_logits(hidden, batch)
    scores = token_logprobs(logits.unsqueeze(0), targets.unsqueeze(0), temperature)[0]
    out = torch.zeros(
        batch.input_ids.shape[0], batch.input_ids.shape[1] - 1, dtype=scores.dtype, device=scores.device
    )
    return out.masked_scatter(batch.completion_mask[:, 1:].to(out.device), scores)


# ----------------------------------------------------------------------------------------------------------
# Stage 1
# ----------------------------------------------------------------------------------------------------------


def example_target(example: Example) -> str:
    """The response Stage 1 teaches for an example, in its protocol (SQR: ends with <REFINE>; HQR: a
    rejection ends with the teacher's rewritten query)."""
    from vsr_model.protocol import format_response

    return format_response(
        example.rationale,
        example.matched,
        example.span if example.matched else None,
        mode=example.mode,
        rewritten_query=None if example.matched else example.rewrite,
    )


class VideoSearchSFTTask:
    """CE on the assistant turn + lambda * InfoNCE(refined query; gt video vs negatives) on the examples in
    the SQR protocol. The LM head runs on completion tokens only."""

    def __init__(self, cfg: SFTConfig, loaded: LoadedModel, dist: DistInfo) -> None:
        self.cfg = cfg
        self.policy = loaded.model
        self.ctx = _SearchContext(cfg.data, dist.device)
        self.num_examples = len(self.ctx.examples)
        self._calls = 0
        self.verify_set: list[Example] = []
        if cfg.verify_eval.every_steps:
            from vsr_model.corpus import Corpus

            verify = read_examples(cfg.verify_eval.examples)[: cfg.verify_eval.max_examples]
            self.verify_set = verify[dist.rank :: dist.world_size]
            self.verify_corpus = Corpus.from_jsonl(cfg.data.corpus, split=cfg.verify_eval.corpus_split)

    def verify_accuracy(self, model: torch.nn.Module, dist: DistInfo) -> dict[str, float]:
        """Greedy turn-1 verdicts on this rank's share of the verify set, summed over ranks: the share of
        right verdicts (unreadable ones count wrong), of `matched` answers and of unreadable ones."""
        from vsr_model.policy import GenerationSettings, VerifyInput
        from vsr_model.protocol import parse_response
        from vsr_train.runtime import all_reduce_sum

        policy = _unwrap(model)
        settings = GenerationSettings(max_new_tokens=self.cfg.verify_eval.max_new_tokens)
        counts = torch.zeros(4)
        size = self.cfg.verify_eval.batch_size
        with torch.no_grad():
            for start in range(0, len(self.verify_set), size):
                chunk = self.verify_set[start : start + size]
                items = [VerifyInput(e.query, self.verify_corpus.clip(e.retrieved)) for e in chunk]
                texts = policy.generate(policy.encode(items), settings).texts
                for example, text in zip(chunk, texts, strict=True):
                    parsed = parse_response(text)
                    counts += torch.tensor(
                        [
                            parsed.answer is not None and parsed.matched == example.matched,
                            parsed.matched,
                            parsed.answer is None,
                            1.0,
                        ]
                    )
        right, said, unreadable, total = (all_reduce_sum(float(c), dist.device) for c in counts)
        total = max(total, 1.0)
        return {
            "eval/ver_turn1": 100.0 * right / total,
            "eval/said_matched": 100.0 * said / total,
            "eval/unparsed": 100.0 * unreadable / total,
        }

    def batch(self, indices: list[int], device: torch.device) -> dict[str, Any]:
        from vsr_model.policy import VerifyInput

        examples = [self.ctx.examples[i] for i in indices]
        items = [VerifyInput(e.query, self.ctx.corpus.clip(e.retrieved), e.mode) for e in examples]
        targets = [self.policy.completion_ids(example_target(e)) for e in examples]
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
        out = model(encoded, use_cache=True, logits=False)
        logits, targets = policy.completion_logits(out.hidden, encoded)
        ce = torch.nn.functional.cross_entropy(logits.float(), targets)
        parts = {"loss/ce": float(ce.detach())}
        loss = ce
        rows = [i for i, e in enumerate(examples) if e.mode == "soft"]
        infonce = self.cfg.infonce
        if infonce.weight > 0 and rows:
            chosen = [examples[i] for i in rows]
            # Rows in the text-rewrite protocol have no <REFINE>: rolled out with the rest, then dropped.
            latents = latent_rollout(policy, encoded, state=out.state, skip_missing=True).latents[rows]
            query, _ = refined_query(policy.sqr, self.ctx.engine, [e.query for e in chosen], latents)
            pos, neg = self.ctx.negatives(
                chosen, [e.retrieved for e in chosen], infonce, self.cfg.seed * 7919 + batch["seed"]
            )
            nce = info_nce(query, pos.to(query.device), neg.to(query.device), infonce.temperature)
            parts["loss/infonce"] = float(nce.detach())
            loss = ce + infonce.weight * nce
        return loss, parts


# ----------------------------------------------------------------------------------------------------------
# Stage 2
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Turn:
    """One verify turn of one trajectory: a row of the GRPO loss."""

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


@dataclass(frozen=True)
class _ExampleMoment:
    """An example as the agent loop reads a query: id, text, ground-truth video and span."""

    query_id: str
    query: str
    video_id: str
    start: float
    end: float


class VideoSearchGRPOTask:
    """G sampled trajectories per prompt through THE agent loop (vsr_model.agent.run_agent), scored with
    vsr_model.rewards: the rollout is the agent evaluation runs, with sampling instead of greedy decoding.

    single_turn: one verify turn on the example's pre-retrieved top-1 (the paper's released setting).
    multi_turn:  live retrieval: the group's original query retrieves its first video; after a rejection
                 SQR refines each trajectory's query and the group's refined queries search again
                 together (SearchMode.GROUPS: one engine.refine_group call per group; never showing a
                 trajectory a video twice when rollout.exclude_seen_videos) for up to
                 ``rollout.max_turns`` turns. Every turn is a fresh prompt and a row of the loss; a
                 trajectory's reward is the mean of its turns' rewards.

    The retrieval reward scores the refined query of every turn that emitted <REFINE> (the refinement
    the agent searched with, or, for a turn that ended the search, the same SQR step run here).

    The rollout calls the policy's own methods (generation, latent rollout), so under ZeRO-3 the GRPO loop
    runs it inside placement.whole_model (``rollout_on_whole_model``): whole weights, no collectives.
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

    def agent_config(self, num_trajectories: int):
        """The agent a rollout runs: policy verifier, SQR refiner, sampled generation."""
        from vsr_model.agent import AgentConfig, SearchMode
        from vsr_model.policy import GenerationSettings

        s, r = self.cfg.grpo, self.cfg.rollout
        return AgentConfig(
            max_turns=r.max_turns if r.mode == "multi_turn" else 1,
            verifier="policy",
            refiner="sqr",
            exclude_seen=r.exclude_seen_videos,
            accumulate_soft_tokens=r.accumulate_soft_tokens,
            final_refine=False,
            top_k=1,
            batch_size=num_trajectories,
            generation=GenerationSettings(
                max_new_tokens=s.max_completion_tokens,
                do_sample=True,
                temperature=s.temperature,
                top_p=s.top_p,
            ),
            search=SearchMode.GROUPS,
        )

    def _retrieval_rewards(
        self, policy, traces, examples: list[Example], seed: int
    ) -> dict[tuple[int, int], float]:
        """(trajectory, turn index) -> retrieval reward of each turn that emitted <REFINE>."""
        from vsr_model.agent import soft_refine
        from vsr_model.policy import VerifyInput
        from vsr_model.rewards import retrieval_reward

        refine_id = policy.refine_token_id
        rows = [
            (i, j)
            for i, trace in enumerate(traces)
            for j, turn in enumerate(trace.turns)
            if refine_id in (turn.completion_ids or ())
        ]
        if not rows:
            return {}
        missing = [(i, j) for i, j in rows if traces[i].turns[j].refined_query is None]
        if missing:  # turns that ended the search: the agent did not refine them
            items = [
                VerifyInput(examples[i].query, self.ctx.corpus.clip(traces[i].turns[j].shown_video))
                for i, j in missing
            ]
            refined, _ = soft_refine(
                policy,
                self.ctx.engine,
                items,
                [traces[i].turns[j].completion_ids for i, j in missing],
                [examples[i].query for i, _ in missing],
            )
            for (i, j), emb in zip(missing, refined, strict=True):
                traces[i].turns[j].refined_query = emb
        refined = torch.stack([traces[i].turns[j].refined_query for i, j in rows]).float().cpu()
        queries = [examples[i].query for i, _ in rows]
        with torch.no_grad():
            original = self.ctx.engine.encode_query(queries).float().cpu()
        pos, neg = self.ctx.negatives(
            [examples[i] for i, _ in rows],
            [traces[i].turns[j].shown_video for i, j in rows],
            self.cfg.infonce,
            seed,
        )
        reward = retrieval_reward(
            refined, original, pos, neg, self.reward_config.retrieval_kind, self.cfg.infonce.temperature
        )
        return dict(zip(rows, reward.tolist(), strict=True))

    def rollout(self, model, indices, settings, num_micro_batches, device, synced) -> Rollouts:
        from vsr_model.agent import run_agent
        from vsr_model.policy import VerifyInput
        from vsr_model.rewards import score_response

        if synced:
            raise ValueError(
                "the vsr_policy rollout runs on whole weights (placement.whole_model), not on ZeRO-3 shards"
            )
        policy = _unwrap(model)
        group, cfg = settings.group_size, self.cfg
        examples = [self.ctx.examples[i] for i in indices for _ in range(group)]
        moments = [_ExampleMoment(e.query_id, e.query, e.video_id, e.start, e.end) for e in examples]
        single = cfg.rollout.mode == "single_turn"
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        traces = run_agent(
            policy,
            self.ctx.engine,
            self.ctx.corpus,
            moments,
            self.agent_config(len(moments)),
            first_videos=[e.retrieved for e in examples] if single else None,
            groups=[i // group for i in range(len(moments))],
        )
        seconds["agent"] = time.perf_counter() - start
        start = time.perf_counter()
        retrieval = self._retrieval_rewards(policy, traces, examples, seed=cfg.seed * 7919 + indices[0] * 31)
        seconds["retrieval_reward"] = time.perf_counter() - start
        start = time.perf_counter()
        turn_rewards: list[list[dict[str, float]]] = []
        all_turns: list[_Turn] = []
        for i, (trace, example) in enumerate(zip(traces, examples, strict=True)):
            rewards = []
            for j, turn in enumerate(trace.turns):
                breakdown = score_response(
                    turn.parsed,
                    bool(turn.label_matched),
                    example.span,
                    self.reward_config,
                    retrieval.get((i, j), 0.0),
                )
                rewards.append(breakdown.as_dict())
                item = VerifyInput(example.query, self.ctx.corpus.clip(turn.shown_video))
                all_turns.append(_Turn(i, item, list(turn.completion_ids), turn.shown_video))
            turn_rewards.append(rewards)
        seconds["reward"] = time.perf_counter() - start

        totals = torch.tensor([sum(r["total"] for r in rs) / len(rs) for rs in turn_rewards])
        components = {
            key: torch.tensor([sum(r[key] for r in rs) / len(rs) for rs in turn_rewards])
            for key in turn_rewards[0][0]
            if key != "total"
        }
        components["turns"] = torch.tensor([float(len(rs)) for rs in turn_rewards])
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
        pos, neg = self.ctx.negatives(examples, [micro_batch.shown[k] for k in rows], self.cfg.infonce, seed)
        nce = info_nce(query, pos.to(query.device), neg.to(query.device), self.cfg.infonce.temperature)
        return self.cfg.infonce.weight * nce, {"loss/sqr_infonce": float(nce.detach())}
