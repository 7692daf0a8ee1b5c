"""`llamdex schema draft|check`: the first step for a new table, and the check before training on it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from simulations.cli.common import UsageError, add_data_args, add_json_arg, emit_json, table_ref

DRAFT_DESCRIPTION = """\
Write a draft of a table's public schema: each column's type (int, float, category, bool), its
category list, whether it has missing values, aliases made from its name, and the label chosen
with --label (classes and answer words). Numeric ranges are NOT taken from the data: the smallest
and largest values of a column are records. Every min and max of the draft is a placeholder that
schema validation refuses until you replace it with a public bound (a physical, legal or documented
range). One line per column says what to check or fill in; then run `llamdex schema check`."""

DRAFT_EPILOG = """\
examples:
  llamdex schema draft loans.csv --label Status --subject "loan applicant"
      # writes loans.csv.schema.json beside the table, the file --data loans.csv looks for
  llamdex schema draft penguins.parquet --label species --out schemas/penguins.json --name penguins
"""

CHECK_DESCRIPTION = """\
Validate a public schema and a table against it: the schema's rules (types, ranges filled in,
categories, label), every record of the table (unknown categories, out-of-range values, missing
values where a column is not nullable, unknown labels; listed by record, counted from 1 below the
header, and column), and that the base LLM can read the label's answer words apart (their first
tokens must differ: the answer is read at one position, in one forward pass). Exit status 0 when all pass, 3 when something must be fixed."""

CHECK_EPILOG = """\
examples:
  llamdex schema check loans.csv                              # schema: loans.csv.schema.json beside it
  llamdex schema check --data loans.csv --schema schemas/loans.json --json
  llamdex schema check --data penguins                        # a registered table and its bundled schema
"""


def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("schema", help="draft a public schema from a table (first step for a new table); check a table against one",
                       description=__doc__, formatter_class=fmt)
    ssub = p.add_subparsers(dest="schema_command", metavar="ACTION")
    d = ssub.add_parser("draft", help="write a schema draft from a CSV/Parquet file (ranges left for you to fill in)",
                        description=DRAFT_DESCRIPTION, epilog=DRAFT_EPILOG, formatter_class=fmt)
    d.add_argument("file", type=Path, metavar="FILE", help="the table: CSV (optionally .gz/.bz2/.zip) or Parquet")
    d.add_argument("--label", required=True, metavar="COL", help="the column to predict")
    d.add_argument("--subject", default="record", help="what one row describes, used in every question (default: record)")
    d.add_argument("--name", default=None, help="the schema's name (default: the file's name without its suffix)")
    d.add_argument("--out", type=Path, default=None, metavar="FILE", help="where to write the draft (default: FILE.schema.json beside the table)")
    d.add_argument("--force", action="store_true", help="replace an existing file at --out")
    d.set_defaults(func=_draft)
    c = ssub.add_parser("check", help="validate a schema, a table against it, and the label's answer words",
                        description=CHECK_DESCRIPTION, epilog=CHECK_EPILOG, formatter_class=fmt)
    c.add_argument("table", nargs="?", default=None, metavar="TABLE", help="the table, as `schema draft FILE` names it (same as --data)")
    add_data_args(c, default=None, on_invalid=False)
    c.add_argument("--base-model", default="embedded", help="whose tokenizer reads the answer words (default: the embedded SmolLM2)")
    c.add_argument("--no-tokenizer", action="store_true", help="skip the answer-word check (no base LLM is loaded)")
    add_json_arg(c, "the check's findings")
    c.set_defaults(func=_check)
    p.set_defaults(func=lambda a: p.print_help() or 2)


def _draft(args: argparse.Namespace) -> int:
    from client_party.datasets import TableRef, read_table_file
    from client_party.schema_draft import default_draft_path, draft_schema

    if not args.file.is_file():
        raise (IsADirectoryError(21, "Is a directory", str(args.file)) if args.file.is_dir() else FileNotFoundError(2, "No such file", str(args.file)))
    out = args.out or default_draft_path(args.file)
    if out.exists() and not args.force:
        raise UsageError(f"{out} exists; pass --force to replace it, or --out another file")
    name = args.name or TableRef(path=args.file).id
    draft = draft_schema(read_table_file(args.file), label=args.label, name=name, subject=args.subject, source=args.file.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(draft.schema, indent=2, ensure_ascii=False) + "\n")
    print(f"draft written to {out}; before use:")
    for note in draft.notes:
        print(f"  - {note}")
    if draft.placeholders:
        print(f"{len(draft.placeholders)} range bounds still hold a placeholder; `llamdex schema check --data {args.file}"
              f"{'' if args.out is None else f' --schema {out}'}` refuses the schema until they are numbers")
    return 0


def _check(args: argparse.Namespace) -> int:
    from client_party.datasets import validate_table
    from protocol.errors import SchemaError

    if args.table is not None and args.data is not None and args.table != args.data:
        raise UsageError(f"name the table once: {args.table} and --data {args.data} differ")
    args.data = args.data or args.table
    if args.data is None:
        raise UsageError("name the table: llamdex schema check FILE|NAME (or --data FILE|NAME)")
    ref = table_ref(args)
    findings: dict = {"data": str(ref), "schema": None, "records": None, "problems": [], "answer_words": None}
    try:
        schema = ref.schema()  # a SchemaError here names the key and the fix (exit 3)
    except SchemaError as e:
        if args.json is None:
            raise
        findings["schema_error"] = str(e)   # --json: the finding on standard output (or in the file), as for the table's
        emit_json(args.json, findings)
        return 3
    findings["schema"] = {"name": schema.name, "digest": schema.digest, "columns": len(schema.columns), "classes": list(schema.label.classes)}
    raw = ref.read_raw()
    problems = validate_table(raw, schema)
    findings["records"] = len(raw)
    findings["problems"] = [str(p) for p in problems]
    words_error = None
    if not args.no_tokenizer:
        from provider_party.model.base_llm import load_tokenizer
        from provider_party.model.prompting import PromptBuilder

        print(f"reading the answer words with {args.base_model}'s tokenizer…", file=sys.stderr, flush=True)
        try:
            ids = PromptBuilder(load_tokenizer(args.base_model), schema).verbalizer_ids
            findings["answer_words"] = {"ok": True, "first_tokens": dict(zip(schema.label.verbalizers, ids))}
        except SchemaError as e:
            words_error = str(e)
            findings["answer_words"] = {"ok": False, "error": words_error}
    if emit_json(args.json, findings):
        return 3 if problems or words_error or len(raw) == 0 else 0
    print(f"schema {schema.name!r} ({schema.digest[:19]}…): valid; {len(schema.columns)} columns, label {schema.label.name!r} "
          f"with {schema.label.num_classes} classes")
    if problems:
        rows = {p.row for p in problems if p.row is not None}
        print(f"table {ref}: {len(problems)} problem(s) in {len(rows)} of {len(raw)} records:")
        for p in problems[:20]:
            print(f"  {p}")
        if len(problems) > 20:
            print(f"  … and {len(problems) - 20} more (--json lists them all)")
        if rows and not any(p.row is None for p in problems):
            print("fix the table or the schema, or train with --on-invalid drop (drop bad records) or clip (clip out-of-range numbers)")
        else:   # a column is missing: no record policy helps
            print("a column the schema names is not in the table: check that this schema is the table's (or fix the column's name)")
    elif len(raw) == 0:
        print(f"table {ref}: no records (a header line alone); a table needs records to train on")
    else:
        print(f"table {ref}: all {len(raw)} records valid")
    if words_error:
        print(f"answer words: {words_error}")
    elif findings["answer_words"]:
        print(f"answer words {list(schema.label.verbalizers)}: first tokens differ under {args.base_model}'s tokenizer")
    return 3 if problems or words_error or len(raw) == 0 else 0
