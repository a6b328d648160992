"""The aggregator service: one independent process that talks to the others only through Kafka.

What it reads and obeys:

- ``qflare.devices`` (compacted), signed by ``registry``: device keys; only ``active`` ones verify.
- ``qflare.control.jobs``, signed by ``operator`` or ``scheduler`` (``QFLARE_AGGREGATOR_JOB_SENDERS``;
  the scheduler nudges its own jobs with ``resume``): ``start``
  creates the job and model version 0; ``pause``/``stop`` make it refuse new rounds, ``resume``
  undoes a pause. A round already open runs to its close.
- ``qflare.rounds``, signed by ``scheduler`` (``QFLARE_AGGREGATOR_ROUND_SENDERS``): opens a round
  on the job's latest version; round numbers only increase and one round per job is open at a time,
  so the scheduler sends round r+1 after it has seen ``RoundComplete`` for round r.
- ``qflare.updates``: ``ModelUpdate`` (or its chunks) signed by the device.

What it writes: ``GlobalModel`` versions (``qflare.models``), ``RoundComplete``
(``qflare.rounds.complete``; for ``quorum_not_met``, ``included`` lists the devices whose valid
updates arrived and were discarded) and ``audit_event`` records (``update.accepted`` for each update
folded into a round, ``update.rejected`` for refused ones, ``message.rejected`` for control records;
metadata only: device, job, round, message id, body digest, reason), all signed as ``aggregator``.

Run it with ``python -m services.aggregator``; settings are ``QFLARE_AGGREGATOR_*``
(``services.aggregator.config``) and ``QFLARE_KAFKA_*`` (``qflare.kafka.KafkaSettings``).
"""
