"""Errors that name the input, the rule it broke and the fix, shared by both parties."""

from __future__ import annotations


class LlamdexError(Exception):
    """Base class of every error the project raises on purpose."""


class SchemaError(LlamdexError, ValueError):
    """A public schema is malformed; the message names the column and the problem."""


class DataValidationError(LlamdexError, ValueError):
    """A table violates its schema; `problems` lists (row, column, message) triples."""

    def __init__(self, message: str, problems: list[tuple[object, str, str]] | None = None):
        super().__init__(message)
        self.problems = problems or []

    def kinds(self) -> str:
        """The problems as public facts only: per column the kinds of problem and their counts ("age (out_of_range: 1)"),
        never a cell value or a row. What is printed or sent anywhere but the owner's own `llamdex schema check`."""
        by_column: dict[str, dict[str, int]] = {}
        for p in self.problems:   # `client_party.datasets.Problem`s, or (row, column, message) triples
            column, kind = (p[1], "invalid") if isinstance(p, tuple) else (p.column, p.kind)
            counts = by_column.setdefault(str(column), {})
            counts[str(kind)] = counts.get(str(kind), 0) + 1
        return "; ".join(f"{c} ({', '.join(f'{k}: {n}' for k, n in sorted(ks.items()))})" for c, ks in sorted(by_column.items())) \
            or "no problem listed"


class TableReadError(LlamdexError, ValueError):
    """A table file cannot be read as the table its name says (empty, not UTF-8 text, not Parquet, an unknown type)."""


class TooFewRecordsError(LlamdexError, ValueError):
    """A table (or its training split) has too few records for what was asked of it."""


class SpecError(LlamdexError, ValueError):
    """An expert architecture spec or its tensors do not match."""


class BudgetError(LlamdexError, ValueError):
    """A differential-privacy target cannot be met or was exceeded."""


class CodedError(LlamdexError, ValueError):
    """An error with a stable machine-readable `code`, the `file` (or item) it concerns and the `rule` broken.

    The gRPC layer maps `code` to a status; the message is for people.
    """

    def __init__(self, code: str, message: str, *, file: str | None = None, rule: str | None = None):
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.file = file
        self.rule = rule


class KeyMaterialError(CodedError):
    """A key file is missing, malformed, of an unsupported type/curve, or has unsafe permissions."""


class SignatureError(CodedError):
    """A DSSE envelope is malformed or its signature does not verify (codes: MALFORMED_ENVELOPE,
    PAYLOAD_TYPE_MISMATCH, NO_SIGNATURES, UNTRUSTED_KEY, BAD_SIGNATURE)."""


class ArtifactError(CodedError):
    """An expert artifact failed verification; `code` names the rule (e.g. DIGEST_MISMATCH)."""


class ArtifactLayoutError(ArtifactError):
    """The folder/tar layout is unsafe: SYMLINK, PATH_TRAVERSAL, FORBIDDEN_FILE, NOT_REGULAR_FILE,
    MISSING_FILE, FILE_TOO_LARGE, DUPLICATE_ENTRY, NOT_A_DIRECTORY, DEST_NOT_EMPTY."""


class ArtifactSignatureError(ArtifactError):
    """The signature file is malformed or does not verify: BAD_BUNDLE, UNTRUSTED_KEY, BAD_SIGNATURE,
    BAD_STATEMENT, UNSUPPORTED_SERIALIZATION."""


class ArtifactIntegrityError(ArtifactError):
    """Files do not match the signed statement: DIGEST_MISMATCH, SIZE_MISMATCH, UNLISTED_FILE, MISSING_FILE."""


class ArtifactContentError(ArtifactError):
    """Signed files are inconsistent or invalid: SPEC_INVALID, SCHEMA_INVALID, SPEC_MISMATCH,
    TENSOR_MISMATCH, DP_INVALID."""


class ReleaseError(CodedError):
    """A model may not leave the process that trained it (code SEEDED_DP_NOISE: its DP-SGD noise came
    from a public seed, so whoever knows the seed can subtract the noise and the DP statement is void)."""


class ReceiptError(CodedError):
    """A privacy receipt is malformed, badly signed or breaks its hash chain (codes: BAD_SIGNATURE,
    BAD_RECEIPT, ARITHMETIC, SEQUENCE_GAP, CHAIN_BROKEN)."""


class LedgerError(CodedError):
    """The provider ledger refused an operation or is inconsistent."""
