"""LangChain adapter: drop-in model classes and LCEL chains compiled into Semantic Variable graphs.

    from parrot_bridge.langchain import ChatParrot, compile

    llm = ChatParrot(base_url="http://127.0.0.1:9000", temperature=0)
    chain = prompt | llm | StrOutputParser()
    chain.invoke({"topic": "cars"})            # one request per model call
    compile(chain).invoke({"topic": "cars"})   # the whole chain as one graph on the server
"""

from parrot_bridge.langchain.chat_model import ChatParrot
from parrot_bridge.langchain.compiled import CompiledChain, compile
from parrot_bridge.langchain.llm import ParrotLLM
from parrot_bridge.langchain.tracer import TracedCall

__all__ = ["ChatParrot", "CompiledChain", "ParrotLLM", "TracedCall", "compile"]
