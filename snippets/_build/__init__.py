"""The build tool: runs the snippets, records their provenance, writes the
notebooks and renders the outputs on the site (standard library only, plus
mkdocs for the MkDocs side)."""
