"""The annotators' domain: accounts, the SQLite store of batches and judgements, item files, exports."""
