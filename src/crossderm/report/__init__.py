"""Cross-run report: load run folders (``runs``), tables (``tables``), figures (``plots``), Markdown/HTML
(``render``) and the report folder with summary.json (``build``); the paper's numbers are data (``published``)."""
