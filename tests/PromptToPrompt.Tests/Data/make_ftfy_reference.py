# Reference outputs of ftfy 6.1.1's fix_text for TextFixerTests: a seeded corpus of mojibake (UTF-8 read as
# each of ftfy's single-byte encodings, once or twice, whole or embedded), pasted-prompt artefacts (entities,
# curly quotes, ligatures, full-width forms, controls, terminal escapes, line breaks, decomposed accents) and
# random mixtures of the characters ftfy's heuristic looks at. ftfy is not a dependency of the project; to
# regenerate, put ftfy 6.1.1 (and wcwidth) on the path of Debian's python3 and run
#   python3 make_ftfy_reference.py > ftfy_fix_text.json
import json, random, re, sys
import ftfy

rng = random.Random(20261202)
PHRASES = ["café au lait", "naïve façade", "Zürich Straße", "señor niño", "crème brûlée", "Ελληνικά γράμματα",
           "русский язык", "Český Krumlov", "łódź żółć", "İstanbul ağaç", "smörgåsbord", "“quoted” text", "½ price",
           "€5 ticket", "São Paulo", "piñata", "Æsir", "voilà le travail", "déjà vu", "Ōsaka", "—dash—", "…",
           "naïve café 🌟", "€ £ ¥", "œuvre", "fiancée", "garçon", "Dvořák", "Ångström", "ΑΣ final", "«guillemets»"]
ENCODINGS = ["latin-1", "windows-1252", "windows-1251", "windows-1250", "windows-1253", "windows-1254",
             "iso-8859-2", "mac_roman", "cp437"]
ARTEFACTS = ["&amp;", "&eacute;", "&#233;", "&#x41;", "&NTILDE;", "&EACUTE;", "&notanentity;", "&#x;", "&#12a;",
             "&#128;", "&#0;", "&#55296;", "&lt;", "<b>", "\u201c", "\u201d", "\u2018", "\u2019", "\ufb01", "\ufb02",
             "\uff21\uff22", "\u3000", "\x07", "\x1b[31m", "\x1b[0m", "\r\n", "\r", "\u2028", "\x85", "e\u0301",
             "\ufeff", "\u200b", "\t", "\x80", "\x9d", "\u0130", "\u03a3", "\ufffd", "\x1a", "\u00a0"]
POOL = ("abcdefgh XYZ ,.'!?-" + "ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖ×ØÙÚÛÜÝÞßàáâãäåæçèéêëìíîïðñòóôõö÷øùúûüýþÿ"
        + "".join(chr(c) for c in range(0x80, 0xa0)) + "€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ¡¢£¤¥¦§¨©ª«¬\xad®¯°±²³´µ¶·¸¹º»¼½¾¿"
        + "ВГРСвЂўΒΓΞΟβ│┌┐═║▀▄█░√≈ŁłŚśŽžĄąĘęŐőŰűşŞ" + "\ufb01\uff41\u3000\u201c\u2018")


def mojibake(text):
    for _ in range(rng.choice([1, 1, 1, 2])):
        encoding = rng.choice(ENCODINGS)
        text = text.encode("utf-8").decode(encoding, errors=rng.choice(["replace", "ignore"]))
    return text


def case():
    kind = rng.randrange(4)
    if kind == 0:
        return mojibake(rng.choice(PHRASES))
    if kind == 1:
        return "a photo of " + mojibake(rng.choice(PHRASES)) + " and " + rng.choice(PHRASES)
    if kind == 2:
        words = [rng.choice(PHRASES + ["a red circle", "on a white background", "cat"]) for _ in range(2)]
        return rng.choice(ARTEFACTS).join(words) + rng.choice(ARTEFACTS) + rng.choice(ARTEFACTS)
    return "".join(rng.choice(POOL) for _ in range(rng.randrange(1, 12)))


cases = []
for _ in range(2000):
    text = case()
    fixed = ftfy.fix_text(text)
    cases.append({"text": text, "fixed": fixed, "normalized": re.sub(r"\s+", " ", fixed).strip().lower()})
json.dump({"ftfy": ftfy.__version__, "python": sys.version.split()[0], "cases": cases}, sys.stdout,
          ensure_ascii=False, indent=0)
