"""How much load each scenario makes: ``--quick`` (about a minute) or full (about 5 minutes)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    quick: bool
    clients: int  # client processes for the concurrent scenarios
    latency_requests: int
    latency_warmup: int
    ttft_requests: int
    conversation_requests: int  # ttft with a long conversation as the body
    throughput_streams: int
    throughput_chunks: int
    throughput_rounds: int  # the median round is reported
    responses_ttft_requests: int  # per target and stream format (chat, responses)
    responses_streams: int
    responses_chunks: int
    responses_rounds: int
    slow_streams: int
    slow_rounds: int  # proxies only; direct runs one round (it has no proxy memory to watch)
    cancel_sequential: int
    cancel_concurrent: int  # cancel's concurrent run, and cancel_new_conn
    disconnect_repeats: int
    concurrent_streams: int
    concurrent_tokens: int  # per stream, at 50 a second
    concurrent_rounds: int  # each through every target in turn
    resume_streams: int
    resume_tokens: int  # per stream, at 50 a second

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"


QUICK = Settings(
    quick=True,
    clients=2,
    latency_requests=300,
    latency_warmup=100,
    ttft_requests=200,
    conversation_requests=200,
    throughput_streams=50,
    throughput_chunks=200,
    throughput_rounds=1,
    responses_ttft_requests=100,
    responses_streams=50,
    responses_chunks=200,
    responses_rounds=1,
    slow_streams=200,
    slow_rounds=2,
    cancel_sequential=30,
    cancel_concurrent=100,
    disconnect_repeats=20,
    concurrent_streams=100,
    concurrent_tokens=50,
    concurrent_rounds=1,
    resume_streams=20,
    resume_tokens=50,
)
FULL = Settings(
    quick=False,
    clients=2,
    latency_requests=3000,
    latency_warmup=300,
    ttft_requests=2000,
    conversation_requests=1000,
    throughput_streams=200,
    throughput_chunks=500,
    throughput_rounds=3,
    responses_ttft_requests=1000,
    responses_streams=100,
    responses_chunks=500,
    responses_rounds=3,
    slow_streams=2000,
    slow_rounds=3,
    cancel_sequential=200,
    cancel_concurrent=500,
    disconnect_repeats=200,
    concurrent_streams=100,
    concurrent_tokens=250,
    concurrent_rounds=3,
    resume_streams=100,
    resume_tokens=250,
)
