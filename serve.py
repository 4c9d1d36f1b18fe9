import cProfile, signal, sys, uvicorn
from stepplan.app import create_app
from stepplan.settings import load_settings
s = load_settings("/tmp/prof/cfg.toml")
app = create_app(s)
prof = cProfile.Profile()
config = uvicorn.Config(app, host="127.0.0.1", port=18932, loop="uvloop", http="httptools", log_level="warning")
server = uvicorn.Server(config)
prof.enable()
server.run()
prof.disable()
prof.dump_stats(sys.argv[1])
