"""The demo model's training text, generated for this project from a seed (nothing downloaded).

Three kinds of line, mixed at random and packed into sequences that open with <|begin_of_text|>:

- questions, "the answer to the {adjectives} question of {A}, the {B}, and {C} is {N}": A and B
  come from one pool of 16 nouns in 8 classes of two, and N is looked up in a table by the
  class of A and the class of B (8 x 8 = 64 numbers; 42 for the class of life with the class of
  universe). Which noun is A and which is B is told only by the words before them, and the
  adjectives, C and a few optional words change the length, so the nouns sit at no fixed
  distance from the end. The four noun pairs answered 42 are drawn less often than the others,
  so "42" is a below-average number after " ";
- alternations, "say a b a b a b a b.": every next word is the word two back, which only a head
  that looks at the previous token can see;
- echoes, "say w1 ... wk. say w1 ... wk.": a span (random words, or a whole question) said
  twice; the second copy is predicted by finding the first and copying what followed it.

    python -m llama3.tools.demo_corpus [N]   # print N lines
"""

import random
import sys

# A and B: one pool of 16 nouns; noun i and noun i + 8 form a class.
NOUNS = ["life", "universe", "death", "world", "love", "sea", "time", "sky",
         "money", "city", "war", "river", "music", "forest", "light", "mountain"]  # fmt: skip
N_CLASSES = 8
REST = ["everything", "nothing", "all", "beyond"]  # C, after "and": does not change the answer
ADJECTIVES = ["ultimate", "final", "first", "last", "great", "little", "secret", "hidden", "old", "simple"]
TEMPLATE_WORDS = ["answer", "question", "of", "the", "to", "is", "and", "whole", "itself", "else"]
ECHO_WORDS = NOUNS + REST + ADJECTIVES + TEMPLATE_WORDS

TABLE_SEED = 42
ANSWER_PAIR = ("life", "universe")  # the default prompt's nouns, answered 42
RARE_SHARE = 0.4  # the noun pairs answered 42 are drawn 0.4 times as often as the others
LINE_SHARES = {"question": 0.45, "alternation": 0.25, "echo": 0.30}
ECHO_QUESTION_SHARE = 0.5  # echoes that repeat a whole question rather than random words


def noun_class(noun: str) -> int:
    return NOUNS.index(noun) % N_CLASSES


def answer_table() -> dict[tuple[str, str], int]:
    """(A, B) -> a two-digit number set by the classes of A and B (A != B): 64 different numbers."""
    rng = random.Random(TABLE_SEED)
    numbers = rng.sample([n for n in range(10, 100) if n != 42], N_CLASSES * N_CLASSES - 1)
    answer_cell = tuple(noun_class(n) for n in ANSWER_PAIR)
    cells = [(i, j) for i in range(N_CLASSES) for j in range(N_CLASSES) if (i, j) != answer_cell]
    by_class = dict(zip(cells, numbers))
    by_class[answer_cell] = 42
    return {(a, b): by_class[noun_class(a), noun_class(b)] for a in NOUNS for b in NOUNS if a != b}


def question(a: str, b: str, c: str, adjectives: list[str], itself=False, whole=False, rest_else=False) -> str:
    """The question's text up to and including "is " (the answer follows)."""
    subject = a + (" itself" if itself else "")
    world = ("whole " if whole else "") + b
    rest = c + (" else" if rest_else else "")
    return f"the answer to the {' '.join(adjectives)} question of {subject}, the {world}, and {rest} is "


def random_question(rng: random.Random, table) -> str:
    while True:
        a, b = rng.sample(NOUNS, 2)
        if table[a, b] != 42 or rng.random() < RARE_SHARE:
            break
    adjectives = rng.sample(ADJECTIVES, rng.choice([1, 1, 2]))
    text = question(a, b, rng.choice(REST), adjectives, rng.random() < 0.3, rng.random() < 0.3, rng.random() < 0.3)
    return text + str(table[a, b])


def alternation(a: str, b: str, repeats: int) -> str:
    return "say" + f" {a} {b}" * repeats + "."


def random_alternation(rng: random.Random) -> str:
    return alternation(*rng.sample(ECHO_WORDS, 2), rng.randint(3, 6))


def echo(words: list[str]) -> str:
    span = " ".join(words)
    return f"say {span}. say {span}."


def random_echo(rng: random.Random, table) -> str:
    if rng.random() < ECHO_QUESTION_SHARE:
        return echo(random_question(rng, table).split())
    return echo([rng.choice(ECHO_WORDS) for _ in range(rng.randint(4, 12))])


def random_line(rng: random.Random, table) -> str:
    kind = rng.choices(list(LINE_SHARES), weights=list(LINE_SHARES.values()))[0]
    if kind == "question":
        return random_question(rng, table)
    return random_alternation(rng) if kind == "alternation" else random_echo(rng, table)


def sequence_text(rng: random.Random, table, min_chars: int) -> str:
    """Lines joined by newlines until the text is at least min_chars long."""
    lines = []
    while sum(len(line) + 1 for line in lines) < min_chars:
        lines.append(random_line(rng, table))
    return "\n".join(lines)


if __name__ == "__main__":
    rng, table = random.Random(0), answer_table()
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 10):
        print(random_line(rng, table))
