"""The source presets: the schemas of the help desks the tool knows, each a mapping
(its tables and one SQL expression per field) and, where the app has them, its own
rules, its links and where its in-app notifications go."""
