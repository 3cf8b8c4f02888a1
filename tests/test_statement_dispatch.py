"""Every statement the parser can return is answered: the connection's own in StatementExecutor.run, every
administrative one by the explicit table StatementExecutor.ADMIN, every SET PARTNER action by PARTNER_ACTIONS."""

from __future__ import annotations

import inspect
import typing

from mirrord.core import statements as st
from mirrord.statements_exec import StatementExecutor

# answered in run() itself, before the administrative table
CONNECTION_STATEMENTS = {
    st.Sql, st.UseDatabase, st.SelectSystemView, st.SetStatementTimeout, st.SetLockTimeout, st.SpWho,
    st.AlterEndpoint, st.EndpointSecurity, st.TransactionStatus, st.ChangeAlert, st.HelpAlert, st.DropAlert,
    *st.LOGIN_STATEMENTS,
}


def _statement_classes() -> set[type]:
    return set(typing.get_args(st.Statement)) | set(st.LOGIN_STATEMENTS) | {st.EndpointSecurity}


def test_every_statement_has_exactly_one_place_that_answers_it():
    for cls in _statement_classes():
        answered = (cls in CONNECTION_STATEMENTS) + (cls in StatementExecutor.ADMIN)
        assert answered == 1, f"{cls.__name__}: answered in {answered} places"


def test_the_run_method_names_every_connection_statement_it_answers():
    source = inspect.getsource(StatementExecutor.run)
    for cls in CONNECTION_STATEMENTS - set(st.LOGIN_STATEMENTS):
        assert f"st.{cls.__name__}" in source, cls.__name__


def test_every_partner_action_of_the_grammar_has_its_handler():
    assert set(StatementExecutor.PARTNER_ACTIONS) == set(st.PARTNER_ACTIONS)
