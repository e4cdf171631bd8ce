"""``python -m refimpl.core``: print the model lifecycle diagram (Mermaid) drawn from the table."""

from .lifecycle import mermaid_diagram

print("```mermaid")
print(mermaid_diagram())
print("```")
