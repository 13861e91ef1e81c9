"""Add message keys to every catalog: python3 /tmp/addkeys.py keys.json (lang -> {key: text})."""
import json, sys
new = json.load(open(sys.argv[1], encoding="utf-8"))
for lang, entries in new.items():
    path = f"i18n/{lang}.json"
    data = json.load(open(path, encoding="utf-8"))
    data.update(entries)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, ensure_ascii=False, indent=2)
        fh.write("\n")
