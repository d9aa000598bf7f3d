"""The training library: LightningModule, data module, batching, callbacks, optimizer, averaging."""
