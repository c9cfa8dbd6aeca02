#!/usr/bin/env bash
# Regenerate weights/README.md: the hand-written header + one section per shipped model, rendered
# from its card.json / classifier.json (python -m engine weights show NAME --markdown), so the figures are the card's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
{
  cat weights/README_header.md
  for card in weights/*/card.json weights/*/classifier.json; do
    $PY -m engine weights show "$(dirname "$card")" --markdown
    echo
  done
} > weights/README.md.tmp
mv weights/README.md.tmp weights/README.md
echo "wrote weights/README.md"
