"""The dashboard's pages, run by ``dashboard/app.py``'s ``st.navigation`` (not imported)."""
