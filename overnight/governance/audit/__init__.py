"""The audit chain: append-only, hash-chained records of what the lab and its agents did.

One module per job: the record format and its hash (`record`), the signing key and
the signed heads kept beside it (`keys`), the `Auditor` the command center runs,
which appends, signs and follows the store's events into the chain (`auditor`),
checking a chain (`verify`) and exporting it (`export`). Knows nothing about
policies, the CLI or the web page; the SQL is the store's.
"""

from overnight.governance.audit.auditor import AuditBroken, Auditor
from overnight.governance.audit.export import export_jsonl
from overnight.governance.audit.keys import ENV_KEY, AuditKey, load_key
from overnight.governance.audit.record import Entry, canonical, correlation_id, record_hash
from overnight.governance.audit.verify import Verdict, verify

__all__ = [
    "ENV_KEY",
    "AuditBroken",
    "AuditKey",
    "Auditor",
    "Entry",
    "Verdict",
    "canonical",
    "correlation_id",
    "export_jsonl",
    "load_key",
    "record_hash",
    "verify",
]
