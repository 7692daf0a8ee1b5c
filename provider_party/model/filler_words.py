"""Words that say nothing about any field's value, drawn from the base LLM's own vocabulary.

The verbalizer can put a few of them where a template's connective would be (`filler_rate`), so
that the expert encoder learns to find a value by its field's name whatever words stand between
them. Where they come from matters: a list written by hand would be written by someone who has seen
the questions it is measured on. The tokenizer's vocabulary is written by nobody on this project, and a
byte-level BPE gives its most frequent words the lowest ids, so its first whole-word tokens are
common English.

Some words would teach a wrong reading if they stood next to a value, and are never used:
- negations and words for a missing value ("not", "without", "unknown"): with them between a field
  and its "yes", the right reading would be "no" or "nothing stated"; likewise "yes" and "true",
  which are yes/no values themselves;
- number words and ordinals ("two", "third"): they are values of their own;
- every word of the schema (column names, aliases, levels, level phrases, units, the subject): a
  filler "female" beside another field would state a value the row does not have.
"""

from __future__ import annotations

import re

from protocol.schema import PublicSchema

# General English, not any table's: words that negate or deny what follows, say a value is absent, or state a yes/no value.
NEGATIONS = frozenset(
    "not no nor neither never none nothing nobody nowhere without lack lacks lacking absent absence missing unknown unavailable "
    "false deny denies denied refuse refused non cannot cant dont doesnt didnt isnt wasnt arent werent hasnt havent hadnt wont "
    "wouldnt shouldnt couldnt don doesn didn isn wasn aren weren hasn haven hadn won wouldn shouldn couldn yes true neg".split())
NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen "
    "nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million billion half dozen first second "
    "third fourth fifth sixth seventh eighth ninth tenth once twice single double triple".split())
_WORD = re.compile(r"[a-z]+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def schema_words(schema: PublicSchema) -> set[str]:
    """Every lowercase word in the schema's public text, camelCase and snake_case names split."""
    text = _CAMEL.sub(" ", schema.to_json()).lower()
    return set(_WORD.findall(text))


def filler_vocabulary(tokenizer, schema: PublicSchema, n: int = 1000) -> tuple[str, ...]:
    """The `n` lowest-id whole-word tokens (three or more lowercase letters, with a leading space) that
    are neither negations, number words nor words of `schema`."""
    vocab = tokenizer.get_vocab()
    banned = NEGATIONS | NUMBER_WORDS | schema_words(schema)
    words: list[str] = []
    for token, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        text = tokenizer.convert_tokens_to_string([token])
        if text.startswith(" ") and (w := text[1:]).isascii() and len(w) >= 3 and w.isalpha() and w.islower() and w not in banned:
            words.append(w)
            if len(words) == n:
                break
    return tuple(words)


__all__ = ["NEGATIONS", "NUMBER_WORDS", "filler_vocabulary", "schema_words"]
