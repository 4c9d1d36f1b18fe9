"""Request features for the ``step-router-v1`` scorer.

Pure Python with bounded work per request: only ``len()`` is taken over the
whole conversation; the few-shot split looks at the last :data:`SCAN_CHARS`
characters of the last user message and every content scan (one word
tokenisation, a handful of simple regexes and ``str.count`` calls) runs on at
most :data:`CUE_CHARS` characters of the query, so the cost does not grow with
the context size.

The features (:data:`FEATURES`, fixed order) are generic on purpose: size,
conversation shape, tool/effort hints, and content cues (math, code,
reasoning, question form, word statistics) measured on the *query* -- the
last block of the last user message once few-shot examples are stripped (see
:func:`split_query`).  There is no learned vocabulary: the word lists below
are hand-written cues, so the scorer cannot key on benchmark wording.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stepplan.routing.types import RouteInput

#: Longest tail of the last user message searched for few-shot structure.
SCAN_CHARS = 6000
#: Longest tail of the query scanned for content cues.
CUE_CHARS = 1500

#: Marks a value that is undefined for this request (the scorer treats it as average).
MISSING = float("nan")

_BLOCK_SPLIT = re.compile(r"\n[ \t]*\n+")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*|[\u3400-\u9fff\uf900-\ufaff]")
_OPTION_LINE = re.compile(r"^[ \t]*\(?[A-Ha-h][.):][ \t]+\S", re.M)
_ANSWER_CUE = re.compile(r"answer[ \t]*[:：]\s*\S")
_INSTRUCTION_PREFIXES = ("answer", "print only", "please answer")
_MATH_CHARS = re.compile(r"[=+*/^<>×÷√∑∫π≤≥]")
_LATEX = re.compile(r"\$[^$\n]{1,200}\$|\\[(\[]|\\[a-z]{2,}\{")
_DIGIT = re.compile(r"\d")
_UPPER = re.compile(r"[A-Z]")
_FRACTION = re.compile(r"\d ?/ ?\d|\d\.\d")
_SENT_END = re.compile(r"[.!?。？！](?:\s|$)")

#: Substrings counted (``str.count``) as code syntax.
_CODE_SYNTAX = (
    "```",
    "def ",
    "class ",
    "return",
    "import ",
    "#include",
    "=>",
    "console.",
    "print(",
    ";\n",
    "{\n",
    "}\n",
    "self.",
    "null",
    "None",
    "int ",
    "void ",
    "const ",
    "let ",
    "var ",
)

#: Word cues: word -> category.
_CUES: dict[str, str] = {}
for _cat, _words in {
    "code": "python java javascript typescript rust golang sql regex function functions program programming "
    "code script algorithm implement implementation debug compile compiler array arrays list lists "
    "string strings integer integers recursion recursive api class method bug",
    "math": "calculate compute solve total sum product percent percentage average probability equation "
    "equations integral derivative prove proof theorem ratio rate minutes hours dollars cost each "
    "per twice half times remaining left",
    "reason": "why explain reason reasoning derive analyze analyse analysis compare evaluate justify design "
    "plan optimize optimise tradeoff tradeoffs strategy argue critique infer deduce",
    "negation": "not except least false incorrect never cannot neither",
    "chat": "write story poem email letter essay rewrite translate summarize summarise hello hi hey "
    "thanks joke recipe describe",
    "constraint": "must should exactly only without ensure format",
    "fraction": "percent half third quarter",
}.items():
    for _w in _words.split():
        _CUES[_w] = _cat
_PHRASES: dict[str, tuple[str, ...]] = {
    "math": ("how many", "how much"),
    "reason": ("step by step", "trade-off"),
    "chat": ("thank you",),
    "constraint": ("at least", "at most"),
}

#: Requested reasoning effort, signed around "medium" (unknown or unset = 0).
_EFFORT_LEVEL = {"minimal": -1.0, "none": -1.0, "low": -0.5, "medium": 0.0, "high": 0.5, "xhigh": 1.0, "max": 1.0}

FEATURES: tuple[str, ...] = (
    "log_total_chars",
    "log_last_user_chars",
    "log_query_chars",
    "log_query_words",
    "query_share",
    "fewshot_blocks",
    "n_user_turns",
    "n_assistant_turns",
    "n_tool_turns",
    "has_system",
    "log_system_chars",
    "log_tools",
    "thinking",
    "effort",
    "log_numbers",
    "digit_frac",
    "math_ops",
    "latex",
    "code_syntax",
    "code_task",
    "math_task",
    "reason_task",
    "negation",
    "chat_task",
    "constraints",
    "n_options",
    "log_option_chars",
    "question_marks",
    "sentences",
    "avg_word_len",
    "long_word_frac",
    "type_token_ratio",
    "upper_frac",
    "cjk_frac",
    "newline_frac",
    "log_stem_chars",
    "numeric_options",
    "log_distinct_numbers",
    "log_max_number",
    "fractions_percent",
    "log_last_sentence_words",
    # word-problem structure (on the stem: the query without option / instruction lines)
    "log_quantities",
    "log_units",
    "log_rates",
    "log_steps",
    "money",
    "percent",
    "numeric_sentence_share",
    "number_words",
    "log_decimals",
    # code-request structure
    "code_signature",
    "code_assert",
    "code_data_words",
    "code_algo_words",
    "write_code",
    # narrative
    "pronoun_share",
)


# Word-problem, code-request and narrative cues (hand-written lists, like the
# ones above): category of each word, counted on the stem.
_STEM_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*")
_STEM_SENTENCE = re.compile(r"[^.!?\n]+[.!?]?")
_SIGNATURE = re.compile(r"\bdef\s+\w+\s*\(|\b\w+\s*\([a-z_, ]*\)\s*(?:->|:|==)")
_WRITE_CODE = re.compile(r"\bwrite (?:a |an )?(?:python )?(?:function|program|script|code|class|method)\b")
_NUMBER_WORD, _UNIT, _RATE, _STEP, _DATA_WORD, _ALGO_WORD, _PRONOUN = range(7)
_STEM_CUES: dict[str, int] = {}
for _stem_cat, _stem_words in (
    (
        _NUMBER_WORD,
        "one two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty hundred thousand "
        "million",
    ),
    (
        _UNIT,
        "second seconds minute minutes hour hours day days week weeks month months year years mile miles km "
        "kilometer kilometers meter meters metre metres cm mm feet foot inch inches yard yards pound pounds lb lbs "
        "ounce ounces oz kg kilogram kilograms gram grams liter liters litre litres gallon gallons cup cups mph "
        "dollar dollars cent cents degree degrees",
    ),
    (_RATE, "per each every times twice thrice double triple half quarter third dozen"),
    (
        _STEP,
        "then after afterwards remaining remainder rest left fewer total altogether combined difference increase "
        "increased increases decrease decreased decreases instead already still if average",
    ),
    (
        _DATA_WORD,
        "list lists array arrays tuple tuples dictionary dict string strings substring character characters matrix "
        "set sets integer integers number numbers digit digits element elements index sequence",
    ),
    (
        _ALGO_WORD,
        "sort sorted sorting recursion recursive regex binary prime fibonacci permutation permutations combination "
        "combinations subsequence palindrome maximum minimum sum count remove reverse nth lcm gcd heap graph tree",
    ),
    (_PRONOUN, "he she they him her them his their it its"),
):
    for _w in _stem_words.split():
        _STEM_CUES.setdefault(_w, _stem_cat)
_RATE_PHRASES = ("an hour", "a day", "a week", "a month", "a year")
_STEP_PHRASES = ("more than", "less than", "in all")
_MONEY_WORDS = ("dollar", "cent", "euro")


def _log1p(x: float) -> float:
    return math.log1p(x) if x > 0 else 0.0


def split_query(text: str) -> tuple[str, int]:
    """Return ``(query, n_blocks)`` for a user message.

    Blocks are separated by blank lines.  When two or more blocks before the
    last one carry an answer (``Answer: X``) -- few-shot examples followed by
    a question -- the query is the last block (with the block before it if
    the last one is only a cue such as ``Answer:``); otherwise it is the
    whole message.
    """
    stripped = text.strip()
    blocks = [b for b in _BLOCK_SPLIT.split(stripped) if b.strip()]
    if len(blocks) >= 3:
        answered = 0
        for b in blocks[:-1]:
            if _ANSWER_CUE.search(b.lower()):
                answered += 1
                if answered >= 2:
                    query = blocks[-1]
                    if len(query) < 16:
                        query = blocks[-2] + "\n\n" + query
                    return query, len(blocks)
    return stripped, len(blocks)


def _last_sentence_words(text: str) -> int:
    body = text[-600:].rstrip()
    end = len(body) - 1
    cut = -1
    for mark in (". ", "? ", "! ", ".\n", "?\n", "!\n", "。", "？", "！"):
        cut = max(cut, body.rfind(mark, 0, end))
    return len(body[cut + 1 :].split())


def extract(inp: RouteInput) -> list[float]:
    """Feature values of a request, in :data:`FEATURES` order."""
    total_chars = 0
    n_user = n_asst = n_tool = 0
    system_chars = 0
    last_user = ""
    for role, text in inp.turns:
        n = len(text)
        total_chars += n
        if role == "user":
            n_user += 1
            last_user = text
        elif role == "assistant":
            n_asst += 1
        elif role == "tool":
            n_tool += 1
        elif role == "system":
            system_chars += n
    if not last_user:
        # No user text (e.g. a tool-result continuation): use the last non-empty turn.
        for _role, text in reversed(inp.turns):
            if text:
                last_user = text
                break
    if inp.input_tokens is not None and inp.input_tokens > 0:
        # The tokenizer's count, when the gateway has one (~4 chars per token).
        total_chars = max(total_chars, inp.input_tokens * 4)

    last_len = len(last_user)
    query, n_blocks = split_query(last_user[-SCAN_CHARS:] if last_len > SCAN_CHARS else last_user)
    qlen = len(query)
    scan = query[-CUE_CHARS:] if qlen > CUE_CHARS else query
    slen = max(len(scan), 1)
    lower = scan.lower()

    # Words and word cues (one pass).
    words = _WORD.findall(lower)
    counts = {"code": 0, "math": 0, "reason": 0, "negation": 0, "chat": 0, "constraint": 0, "fraction": 0}
    numbers: list[str] = []
    latin: list[str] = []
    n_cjk = 0
    for w in words:
        c0 = w[0]
        if c0 <= "9":
            numbers.append(w)
            continue
        if c0 > "\u3000":
            n_cjk += 1
            continue
        cat = _CUES.get(w)
        if cat is not None:
            counts[cat] += 1
        if len(w) > 1:
            latin.append(w)
    for cat, phrases in _PHRASES.items():
        for p in phrases:
            counts[cat] += lower.count(p)
    counts["math"] += scan.count("%") + scan.count("$")
    counts["negation"] += scan.count("NOT") + scan.count("EXCEPT")
    counts["fraction"] += scan.count("%") + len(_FRACTION.findall(scan))
    n_alpha = len(latin) + n_cjk
    if latin:
        avg_wlen = sum(map(len, latin)) / len(latin)
        long_frac = sum(1 for w in latin if len(w) >= 9) / len(latin)
    else:
        avg_wlen = long_frac = MISSING
    ttr = (len(set(latin)) + n_cjk) / n_alpha if n_alpha else MISSING
    max_num = 0.0
    for num in numbers:
        try:
            max_num = max(max_num, float(num.replace(",", "")))
        except ValueError:
            pass

    # Multiple-choice structure (options sit at the end of the query).
    n_opts = option_chars = numeric_opts = instr_chars = 0
    stem = scan
    if _OPTION_LINE.search(scan):
        kept: list[str] = []
        for line in scan.splitlines():
            if _OPTION_LINE.match(line):
                n_opts += 1
                option_chars += len(line) + 1
                body = line.strip()[2:].strip()
                if body and len(_DIGIT.findall(body)) * 3 >= len(body):
                    numeric_opts += 1
            elif line.lstrip().lower().startswith(_INSTRUCTION_PREFIXES):
                instr_chars += len(line) + 1
            else:
                kept.append(line)
        stem = "\n".join(kept)
    stem_chars = max(qlen - option_chars - instr_chars, 0)

    code_syntax = 0
    for tok in _CODE_SYNTAX:
        code_syntax += scan.count(tok)

    effort = _EFFORT_LEVEL.get(inp.effort.lower(), 0.0) if inp.effort else 0.0

    return [
        _log1p(total_chars),
        _log1p(last_len),
        _log1p(qlen),
        _log1p(len(words) * qlen / slen),
        qlen / last_len if last_len else 0.0,
        _log1p(n_blocks - 1),
        _log1p(n_user - 1),
        _log1p(n_asst),
        _log1p(n_tool),
        1.0 if system_chars else 0.0,
        _log1p(system_chars),
        _log1p(inp.n_tools),
        1.0 if inp.thinking else 0.0,
        effort,
        _log1p(len(numbers)),
        len(_DIGIT.findall(scan)) / slen,
        _log1p(len(_MATH_CHARS.findall(scan))),
        _log1p(len(_LATEX.findall(scan))),
        _log1p(code_syntax),
        _log1p(counts["code"]),
        _log1p(counts["math"]),
        _log1p(counts["reason"]),
        _log1p(counts["negation"]),
        _log1p(counts["chat"]),
        _log1p(counts["constraint"]),
        float(min(n_opts, 10)),
        _log1p(option_chars / n_opts) if n_opts else 0.0,
        _log1p(scan.count("?") + scan.count("？")),
        _log1p(len(_SENT_END.findall(scan))),
        avg_wlen,
        long_frac,
        ttr,
        len(_UPPER.findall(scan)) / slen,
        n_cjk / n_alpha if n_alpha else 0.0,
        scan.count("\n") / slen * 10.0,
        _log1p(stem_chars),
        numeric_opts / n_opts if n_opts else 0.0,
        _log1p(len(set(numbers))),
        _log1p(math.log10(min(max_num, 1e30) + 1.0)),
        _log1p(counts["fraction"]),
        _log1p(_last_sentence_words(scan)),
        *_stem_cues(scan, lower, stem),
    ]


def _stem_cues(scan: str, lower: str, stem: str) -> list[float]:
    """Word-problem, code-request and narrative structure, in :data:`FEATURES` order."""
    stem_lower = stem.lower() if stem is not scan else lower
    cnt = [0] * 7
    n_num = n_dec = n_words = 0
    get = _STEM_CUES.get
    for w in _STEM_WORD.findall(stem_lower):
        if w[0] <= "9":
            n_num += 1
            if "." in w:
                n_dec += 1
            continue
        n_words += 1
        c = get(w)
        if c is not None:
            cnt[c] += 1
    rates = cnt[_RATE] + sum(stem_lower.count(p) for p in _RATE_PHRASES)
    steps = cnt[_STEP] + sum(stem_lower.count(p) for p in _STEP_PHRASES)
    money = stem.count("$") + stem.count("€") + stem.count("£") + sum(stem_lower.count(p) for p in _MONEY_WORDS)
    percent = stem.count("%") + stem_lower.count("percent")
    n_sent = n_num_sent = 0
    for sentence in _STEM_SENTENCE.findall(stem):
        if any(ch.isalpha() for ch in sentence):
            n_sent += 1
            if any(ch.isdigit() for ch in sentence):
                n_num_sent += 1
    signatures = min(len(_SIGNATURE.findall(scan)), 5) if "(" in scan else 0
    write_code = 1.0 if "write" in lower and _WRITE_CODE.search(lower) else 0.0
    return [
        _log1p(n_num + cnt[_NUMBER_WORD]),
        _log1p(cnt[_UNIT]),
        _log1p(rates),
        _log1p(steps),
        _log1p(money),
        _log1p(percent),
        n_num_sent / n_sent if n_sent else 0.0,
        _log1p(cnt[_NUMBER_WORD]),
        _log1p(n_dec),
        float(signatures),
        float(min(lower.count("assert"), 5)),
        _log1p(cnt[_DATA_WORD]),
        _log1p(cnt[_ALGO_WORD]),
        write_code,
        cnt[_PRONOUN] / n_words if n_words else 0.0,
    ]
