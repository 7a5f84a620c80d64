"""The seven built-in studies, one module each, named for the study; each registers its `Study` class
(analysis.study) with `@register.study`, as a plug-in's study does. `heurbench report` picks one by --study, the
sweep YAML's `study:`, or the sweep name's prefix (s1..s7, quickstart)."""
