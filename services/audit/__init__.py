"""The audit service: one independent process that talks to the others only through Kafka.

What it reads (each verified with ``qflare.protocol.Decoder``; service and operator keys from
``<keys_dir>/trusted``, device keys from the compacted ``qflare.devices`` topic):

- enrolments and the registry's answers to them, device records, device health, rounds, rounds
  complete, job and registry commands, and ``audit_event`` records of every service: one chain
  entry each;
- models: one ``model.published`` entry per version (unchunked body, or the first chunk, whose
  ``ModelChunk`` header names the digest and size); weights are never stored;
- NOT heartbeats (high volume, no security meaning; liveness is the registry's ``device.health``)
  and NOT raw updates (large): their fate is the aggregator's ``update.accepted`` and
  ``update.rejected`` audit events, one per update (device, job, round, message id, body digest),
  and ``RoundComplete.included``.

Anything that does not verify (garbage, unknown key, bad signature, wrong type) is appended as a
``message.rejected`` entry with the decoder's reason: never dropped silently. Re-sent copies of a
message already accepted in this run (``ReplayError``, e.g. an outbox re-send) are counted only.

Events named ``audit.*`` are refused whoever signed them (``reserved_event``): those names belong
to the entries this service writes itself.

What it writes: the hash chain in PostgreSQL (schema ``audit``; one chain per topic prefix, the
``stream``), signed checkpoints every ``checkpoint_every`` entries, signed chain heads to the
compacted ``qflare.audit.heads`` topic and a head file (``services.audit.heads``), and an
Elasticsearch index derived from the chain (``services.audit.indexer``).

Run it with ``python -m services.audit``; settings are ``QFLARE_AUDIT_*``
(``services.audit.config``) and ``QFLARE_KAFKA_*``.
"""
