"""vsr_model: the model side of VideoSearch-R1 (data, video, engine, policy, SQR, protocol, rewards, metrics)."""

__version__ = "0.1.0"
