"""Evaluation-only question phrasings: how end users might ask, written apart from the training verbalizer.

The connectors are trained on `protocol.verbalizer` questions. Measuring them only on that
verbalizer's phrasing would flatter them, so this module is a second, independent set of templates
used for EVALUATION ONLY (nothing under `provider_party/` or `protocol/` may import it; a test
checks that): other connectives, values before names, yes/no columns said as "does not have" or
"lacks", ordinal levels said as words, and missing values said in other words or left out.

Two mechanisms:
- `general_question`: works for any schema, from its column names, aliases and levels alone.
- `HAND_WRITTEN`: per schema name, sentences written by hand for that table's domain ("a
  34-year-old gentleman holding a second-class ticket"), with no field names where a person would
  not use them. Tables without one fall back to the general mechanism.

`eval_questions` mixes the two (half each where a hand-written template exists).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from protocol.encoding import bool_level, is_missing
from protocol.schema import ColumnSpec, PublicSchema
from protocol.verbalizer import with_article

Row = Mapping[str, Any]

ORDINALS = {"1st": "first", "2nd": "second", "3rd": "third", "4th": "fourth", "5th": "fifth"}

# --- the general mechanism ---------------------------------------------------------------------------

OPENINGS = ("Quick question about {a_subject}.", "{A_subject} I am looking at:", "Here's what we know about one {subject}.",
            "Suppose {a_subject} fits this description.", "")
NAMED = ("{name} was {value}", "their {name} reads {value}", "{name} \u2014 {value}", "{value} is the {name}",
         "{value}, as far as {name} goes", "on {name}, {value}", "{name} equals {value}")
YES = ("does have {name}", "{name} applies", "answers yes on {name}", "{name}: affirmative")
NO = ("does not have {name}", "lacks {name}", "{name} does not apply", "answers no on {name}")
UNKNOWN = ("we do not know the {name}", "{name} was never filled in", "nobody wrote down the {name}")
JOINS = (", ", "; ", ", plus ", ". Also, ")


def _number(col: ColumnSpec, value: Any, rng: random.Random) -> str:
    v = float(value)
    decimals = col.printed_decimals
    text = str(round(v)) if decimals == 0 else f"{v:.{decimals}f}"
    if col.unit == "dollars" and rng.random() < 0.5:
        return "$" + text
    if col.unit and rng.random() < 0.5:
        return f"{text} {col.unit}"
    return text


def _level(col: ColumnSpec, value: Any) -> str:
    text = str(value).replace("_", " ")
    return ORDINALS.get(text, text)


def general_field(col: ColumnSpec, value: Any, rng: random.Random) -> str | None:
    """One column in the general evaluation phrasing; None when a missing value is left out."""
    name = rng.choice(col.phrases)
    if is_missing(value):
        return None if rng.random() < 0.5 else rng.choice(UNKNOWN).format(name=name)
    if col.type == "bool":  # the plainest name: aliases such as "has a partner" do not follow "lacks"
        return rng.choice(YES if bool_level(value) == "yes" else NO).format(name=col.phrases[0])
    text = _number(col, value, rng) if col.is_numeric else _level(col, value)
    return rng.choice(NAMED).format(name=name, value=text)


def general_question(schema: PublicSchema, row: Row, rng: random.Random) -> str:
    cols = list(schema.columns)
    rng.shuffle(cols)
    parts = [p for p in (general_field(c, row.get(c.name), rng) for c in cols) if p]
    body = rng.choice(JOINS).join(parts)
    body = (body[0].upper() + body[1:] + ".") if body else ""
    a_subject = with_article(schema.subject)
    opening = rng.choice(OPENINGS).format(subject=schema.subject, a_subject=a_subject, A_subject=a_subject[0].upper() + a_subject[1:])
    return " ".join(p for p in (opening, body, schema.label.question) if p)


# --- hand-written, per table -------------------------------------------------------------------------


def _num(value: Any, decimals: int = 0) -> str:
    v = float(value)
    return str(round(v)) if decimals == 0 or v.is_integer() else f"{v:.{decimals}f}"


def _yes(value: Any) -> bool:
    return bool_level(value) == "yes"


def titanic(row: Row, rng: random.Random) -> str:
    female = row["sex"] == "female"
    noun = rng.choice(("woman", "lady") if female else ("man", "gentleman"))
    cls = ORDINALS[row["passengerClass"]]
    age = None if is_missing(row["age"]) else _num(row["age"], 1)
    if age is None:
        return rng.choice((f"A {noun} of unknown age travelling {cls} class.", f"A {noun} in {cls} class; nobody knows how old.")) + " " + \
            "Did this passenger survive the sinking of the Titanic?"
    return rng.choice((f"A {age}-year-old {noun} travelling {cls} class.", f"A {noun} holding a {cls}-class ticket, aged {age}.",
                       f"{'She' if female else 'He'} was {age} years old and travelled {cls} class.")) + \
        " Did this passenger survive the sinking of the Titanic?"


def default(row: Row, rng: random.Random) -> str:
    student = _yes(row["student"])
    bal, inc = _num(row["balance"]), _num(row["income"])
    return rng.choice((
        f"A {'student' if student else 'cardholder who is not a student'} carries ${bal} on the card each month and earns ${inc} a year.",
        f"This person earns {inc} dollars a year, {'is still studying' if student else 'is not studying'}, and leaves {bal} dollars unpaid on the card.",
    )) + " Will this credit-card holder default on their debt?"


_HOME = {"owner": "owns their home", "rent": "rents", "parents": "lives with their parents", "priv": "lives in private housing",
         "other": "has some other housing arrangement", "ignore": "gave an ignored housing answer"}
_JOB = {"fixed": "on a permanent contract", "freelance": "as a freelancer", "partime": "part-time", "others": "in some other arrangement"}


def credit(row: Row, rng: random.Random) -> str:
    parts = [f"An applicant of {_num(row['Age'])} who has been {_num(row['Seniority'])} years with the same employer"]
    if not is_missing(row["Job"]):
        parts.append(f"works {_JOB[row['Job']]}")
    if not is_missing(row["Home"]):
        parts.append(_HOME[row["Home"]])
    if not is_missing(row["Marital"]):
        parts.append(f"is {'widowed' if row['Marital'] == 'widow' else row['Marital']}")
    parts.append("has missed payments before" if _yes(row["Records"]) else "has a clean payment history")
    parts.append("did not declare an income" if is_missing(row["Income"]) else f"earns {_num(row['Income'])} a month")
    text = ", ".join(parts) + f". They want {_num(row['Amount'])} over {_num(row['Time'])} months to buy something that costs {_num(row['Price'])}."
    return text + " Is this loan applicant a good or a bad credit risk?"


def churn(row: Row, rng: random.Random) -> str:
    intl = "has" if _yes(row["international_plan"]) else "does not have"
    vm = "subscribes to voice mail" if _yes(row["voice_mail_plan"]) else "has no voice mail"
    return (f"This customer {intl} an international plan and {vm}, with {_num(row['number_vmail_messages'])} messages stored. "
            f"Last month they talked {_num(row['total_day_minutes'], 1)} minutes in the daytime, {_num(row['total_eve_minutes'], 1)} in the evening "
            f"and {_num(row['total_night_minutes'], 1)} at night, and made {_num(row['total_intl_calls'])} international calls lasting "
            f"{_num(row['total_intl_minutes'], 1)} minutes in all. They rang customer service {_num(row['number_customer_service_calls'])} times. "
            "Did this customer leave the telephone company?")


_ADDONS = {"online_security": "online security", "online_backup": "online backup", "device_protection": "device protection",
           "tech_support": "tech support", "streaming_tv": "TV streaming", "streaming_movies": "movie streaming"}


def telco(row: Row, rng: random.Random) -> str:
    who = "woman" if _yes(row["female"]) else "man"
    who = f"{'senior ' if _yes(row['senior_citizen']) else ''}{who}"
    fam = f"{'with' if _yes(row['partner']) else 'without'} a partner and {'with' if _yes(row['dependents']) else 'without'} dependents"
    if not _yes(row["phone_service"]):
        phone = "has no phone line"
    else:
        phone = "has several phone lines" if row["multiple_lines"] == "Yes" else "has a single phone line"
    if row["internet_service"] == "No":
        net = "no internet at all, so none of the internet add-ons"
    else:
        takes = [v for k, v in _ADDONS.items() if row[k] == "Yes"]
        skips = [v for k, v in _ADDONS.items() if row[k] == "No"]
        net = f"{'fiber-optic' if row['internet_service'] == 'Fiber optic' else 'DSL'} internet"
        net += f", taking {', '.join(takes)}" if takes else ", taking no add-ons"
        net += f" but not {', '.join(skips)}" if takes and skips else ""
    contract = {"Month-to-month": "pay month to month", "One year": "signed a one-year contract", "Two year": "signed a two-year contract"}[row["contract"]]
    pay = {"Electronic check": "an electronic check", "Mailed check": "a check in the mail", "Bank transfer (automatic)": "automatic bank transfer",
           "Credit card (automatic)": "automatic credit-card payment"}[row["payment_method"]]
    bills = "get paperless bills" if _yes(row["paperless_billing"]) else "still get paper bills"
    total = "nothing billed yet in total" if is_missing(row["total_charges"]) else f"${_num(row['total_charges'], 2)} billed so far"
    return (f"A {who} {fam}, customer for {_num(row['tenure'])} months, {phone} and {net}. They {contract}, pay by {pay} and {bills}; "
            f"${_num(row['monthly_charges'], 2)} a month, {total}. Did this customer leave the company in the last month?")


_TRAVEL = {"Non-Travel": "never travels for work", "Travel_Rarely": "rarely travels for work", "Travel_Frequently": "travels for work a lot"}
_EDU = {"Below_College": "did not go to college", "College": "went to college", "Bachelor": "holds a bachelor's degree",
        "Master": "holds a master's degree", "Doctor": "holds a doctorate"}


def attrition(row: Row, rng: random.Random) -> str:
    def words(v: str) -> str:
        return str(v).replace("_", " ").lower()

    he = "she" if row["Gender"] == "Female" else "he"
    return (f"A {_num(row['Age'])}-year-old {words(row['MaritalStatus'])} {'woman' if he == 'she' else 'man'}, a {words(row['JobRole'])} in "
            f"{words(row['Department']).replace('research development', 'research and development')}, who {_TRAVEL[row['BusinessTravel']]} and lives "
            f"{_num(row['DistanceFromHome'])} miles away. {he.capitalize()} {_EDU[row['Education']]} in {words(row['EducationField'])}. "
            f"Job level {_num(row['JobLevel'])}, {_num(row['MonthlyIncome'])} dollars a month (daily rate {_num(row['DailyRate'])}, hourly rate "
            f"{_num(row['HourlyRate'])}, monthly rate {_num(row['MonthlyRate'])}), a {_num(row['PercentSalaryHike'])} percent raise last time, "
            f"stock option level {_num(row['StockOptionLevel'])}. Before this job {he} worked at {_num(row['NumCompaniesWorked'])} companies; "
            f"{_num(row['TotalWorkingYears'])} years of experience, {_num(row['YearsAtCompany'])} years here, {_num(row['YearsInCurrentRole'])} "
            f"in the current role, {_num(row['YearsSinceLastPromotion'])} since the last promotion and {_num(row['YearsWithCurrManager'])} "
            f"with the current manager; {_num(row['TrainingTimesLastYear'])} trainings last year. "
            f"{he.capitalize()} {'works' if _yes(row['OverTime']) else 'does not work'} overtime and was rated {words(row['PerformanceRating'])}. "
            f"Survey: {words(row['EnvironmentSatisfaction'])} satisfaction with the environment, {words(row['JobSatisfaction'])} with the job and "
            f"{words(row['RelationshipSatisfaction'])} with relationships; {words(row['JobInvolvement'])} involvement; a {words(row['WorkLifeBalance'])} "
            "work-life balance. Did this employee leave the company?")


def penguins(row: Row, rng: random.Random) -> str:
    parts = [rng.choice((f"A penguin seen on {row['island']} island", f"On {row['island']} we measured a penguin"))]
    if not is_missing(row["sex"]):
        parts.append(f"a {row['sex']} bird")
    sizes = []
    if not is_missing(row["bill_length_mm"]):
        sizes.append(f"a bill {_num(row['bill_length_mm'], 1)} mm long")
    if not is_missing(row["bill_depth_mm"]):
        sizes.append(f"{_num(row['bill_depth_mm'], 1)} mm deep")
    if not is_missing(row["flipper_length_mm"]):
        sizes.append(f"flippers of {_num(row['flipper_length_mm'])} mm")
    parts.append(("with " + ", ".join(sizes)) if sizes else "not measured")
    weight = "" if is_missing(row["body_mass_g"]) else f" It weighed {_num(row['body_mass_g'])} grams."
    return ", ".join(parts) + "." + weight + " Which species is this penguin?"


HAND_WRITTEN: dict[str, Callable[[Row, random.Random], str]] = {
    "titanic": titanic, "default": default, "credit": credit, "churn": churn, "telco": telco, "attrition": attrition,
    "penguins": penguins,
}


def eval_questions(schema: PublicSchema, rows: list[Row], seed: int = 0, hand_share: float = 0.5) -> tuple[list[str], list[str]]:
    """(questions, which mechanism made each: "hand" or "general") for `rows`, seeded."""
    rng = random.Random(50_000 + seed)
    hand = HAND_WRITTEN.get(schema.name)
    out, kinds = [], []
    for row in rows:
        text = None
        if hand is not None and rng.random() < hand_share:
            try:
                text = hand(row, rng)
            except KeyError:  # another table under a registered name: its columns differ
                text = None
        if text is not None:
            out.append(text)
            kinds.append("hand")
        else:
            out.append(general_question(schema, row, rng))
            kinds.append("general")
    return out, kinds


__all__ = ["HAND_WRITTEN", "eval_questions", "general_question"]
