"""Factual task ``cities``: statements that a real city lies in a country, true or false."""

from __future__ import annotations

import random

import pandas as pd

from probes.datasets.tasks._common import HALF, _frame

# Real cities and their countries, from general knowledge; at least MIN_CITIES (5) for every country.
COUNTRY_CITIES: dict[str, tuple[str, ...]] = {
    "France": (
        "Lyon",
        "Marseille",
        "Toulouse",
        "Bordeaux",
        "Lille",
        "Nantes",
        "Strasbourg",
        "Montpellier",
        "Rennes",
        "Grenoble",
        "Nice",
        "Dijon",
        "Reims",
    ),
    "Germany": (
        "Munich",
        "Hamburg",
        "Cologne",
        "Frankfurt",
        "Stuttgart",
        "Dresden",
        "Leipzig",
        "Dusseldorf",
        "Nuremberg",
        "Bremen",
        "Hanover",
        "Heidelberg",
        "Bonn",
    ),
    "Italy": (
        "Milan",
        "Naples",
        "Turin",
        "Florence",
        "Venice",
        "Bologna",
        "Palermo",
        "Genoa",
        "Verona",
        "Bari",
        "Pisa",
        "Siena",
        "Trieste",
    ),
    "Spain": (
        "Barcelona",
        "Seville",
        "Bilbao",
        "Malaga",
        "Zaragoza",
        "Alicante",
        "Pamplona",
        "Salamanca",
        "San Sebastian",
        "Cadiz",
        "Murcia",
        "Vigo",
    ),
    "Portugal": ("Lisbon", "Porto", "Coimbra", "Braga", "Faro", "Aveiro"),
    "the United Kingdom": (
        "Manchester",
        "Liverpool",
        "Edinburgh",
        "Glasgow",
        "Leeds",
        "Bristol",
        "Cardiff",
        "Belfast",
        "Sheffield",
        "Newcastle upon Tyne",
        "Nottingham",
        "Southampton",
        "Brighton",
    ),
    "Ireland": ("Dublin", "Cork", "Galway", "Limerick", "Waterford"),
    "the Netherlands": ("Amsterdam", "Rotterdam", "Utrecht", "Eindhoven", "Groningen", "Maastricht"),
    "Belgium": ("Brussels", "Antwerp", "Ghent", "Bruges", "Liege", "Leuven"),
    "Switzerland": ("Zurich", "Geneva", "Basel", "Bern", "Lausanne", "Lucerne"),
    "Austria": ("Vienna", "Salzburg", "Innsbruck", "Graz", "Linz"),
    "Poland": ("Warsaw", "Krakow", "Gdansk", "Wroclaw", "Poznan", "Lodz", "Lublin", "Szczecin", "Torun"),
    "the Czech Republic": ("Prague", "Brno", "Ostrava", "Pilsen", "Olomouc"),
    "Slovakia": ("Bratislava", "Kosice", "Zilina", "Presov", "Nitra"),
    "Hungary": ("Budapest", "Debrecen", "Szeged", "Pecs", "Gyor"),
    "Romania": ("Bucharest", "Cluj-Napoca", "Timisoara", "Iasi", "Constanta"),
    "Bulgaria": ("Sofia", "Plovdiv", "Varna", "Burgas", "Pleven"),
    "Serbia": ("Belgrade", "Novi Sad", "Nis", "Kragujevac", "Subotica"),
    "Croatia": ("Zagreb", "Split", "Dubrovnik", "Rijeka", "Zadar"),
    "Greece": ("Athens", "Thessaloniki", "Patras", "Heraklion", "Larissa"),
    "Sweden": ("Stockholm", "Gothenburg", "Malmo", "Uppsala", "Linkoping"),
    "Norway": ("Oslo", "Bergen", "Trondheim", "Stavanger", "Tromso"),
    "Denmark": ("Copenhagen", "Aarhus", "Odense", "Aalborg", "Esbjerg"),
    "Finland": ("Helsinki", "Tampere", "Turku", "Oulu", "Espoo"),
    "Lithuania": ("Vilnius", "Kaunas", "Klaipeda", "Siauliai", "Panevezys"),
    "Russia": (
        "Moscow",
        "Saint Petersburg",
        "Novosibirsk",
        "Kazan",
        "Vladivostok",
        "Yekaterinburg",
        "Omsk",
        "Sochi",
        "Murmansk",
        "Irkutsk",
    ),
    "Ukraine": ("Kyiv", "Kharkiv", "Odesa", "Lviv", "Dnipro"),
    "Turkey": ("Istanbul", "Ankara", "Izmir", "Antalya", "Bursa", "Konya", "Trabzon", "Gaziantep"),
    "Israel": ("Tel Aviv", "Haifa", "Eilat", "Ashdod", "Netanya"),
    "Saudi Arabia": ("Riyadh", "Jeddah", "Mecca", "Medina", "Dammam"),
    "the United Arab Emirates": ("Dubai", "Abu Dhabi", "Sharjah", "Ajman", "Al Ain"),
    "Iran": ("Tehran", "Isfahan", "Shiraz", "Tabriz", "Mashhad"),
    "Iraq": ("Baghdad", "Basra", "Mosul", "Erbil", "Kirkuk"),
    "Egypt": ("Cairo", "Luxor", "Aswan", "Giza", "Port Said"),
    "Morocco": ("Casablanca", "Marrakesh", "Rabat", "Fez", "Tangier", "Agadir"),
    "Algeria": ("Algiers", "Oran", "Constantine", "Annaba", "Blida"),
    "Tunisia": ("Tunis", "Sfax", "Sousse", "Kairouan", "Bizerte"),
    "Nigeria": ("Lagos", "Abuja", "Kano", "Ibadan", "Port Harcourt"),
    "Ghana": ("Accra", "Kumasi", "Tamale", "Cape Coast", "Takoradi"),
    "Ethiopia": ("Addis Ababa", "Dire Dawa", "Gondar", "Mekelle", "Bahir Dar"),
    "Kenya": ("Nairobi", "Mombasa", "Kisumu", "Nakuru", "Eldoret"),
    "Tanzania": ("Dar es Salaam", "Dodoma", "Arusha", "Zanzibar City", "Mwanza"),
    "South Africa": ("Johannesburg", "Cape Town", "Durban", "Pretoria", "Port Elizabeth"),
    "India": (
        "Mumbai",
        "Delhi",
        "Bangalore",
        "Chennai",
        "Kolkata",
        "Jaipur",
        "Pune",
        "Ahmedabad",
        "Lucknow",
        "Varanasi",
        "Amritsar",
        "Agra",
        "Kochi",
    ),
    "Pakistan": ("Karachi", "Lahore", "Islamabad", "Peshawar", "Quetta"),
    "Bangladesh": ("Dhaka", "Chittagong", "Khulna", "Sylhet", "Rajshahi"),
    "Sri Lanka": ("Colombo", "Kandy", "Galle", "Jaffna", "Negombo"),
    "Nepal": ("Kathmandu", "Pokhara", "Biratnagar", "Birgunj", "Bhaktapur"),
    "China": (
        "Shanghai",
        "Beijing",
        "Shenzhen",
        "Guangzhou",
        "Chengdu",
        "Wuhan",
        "Xi'an",
        "Hangzhou",
        "Nanjing",
        "Harbin",
        "Tianjin",
        "Chongqing",
        "Suzhou",
    ),
    "Japan": (
        "Tokyo",
        "Osaka",
        "Kyoto",
        "Nagoya",
        "Sapporo",
        "Hiroshima",
        "Fukuoka",
        "Kobe",
        "Yokohama",
        "Nagasaki",
        "Sendai",
        "Kanazawa",
        "Okayama",
    ),
    "South Korea": ("Seoul", "Busan", "Incheon", "Daegu", "Gwangju"),
    "Vietnam": ("Hanoi", "Ho Chi Minh City", "Da Nang", "Hue", "Haiphong"),
    "Thailand": ("Bangkok", "Chiang Mai", "Phuket", "Pattaya", "Khon Kaen"),
    "Malaysia": ("Kuala Lumpur", "George Town", "Ipoh", "Kota Kinabalu", "Johor Bahru"),
    "Indonesia": ("Jakarta", "Surabaya", "Bandung", "Medan", "Yogyakarta"),
    "the Philippines": ("Manila", "Cebu City", "Davao City", "Quezon City", "Iloilo City"),
    "Australia": (
        "Sydney",
        "Melbourne",
        "Brisbane",
        "Adelaide",
        "Canberra",
        "Hobart",
        "Darwin",
        "Gold Coast",
        "Cairns",
    ),
    "New Zealand": ("Auckland", "Wellington", "Christchurch", "Dunedin", "Rotorua"),
    "Canada": (
        "Toronto",
        "Montreal",
        "Vancouver",
        "Calgary",
        "Ottawa",
        "Quebec City",
        "Winnipeg",
        "Edmonton",
        "Regina",
        "Saskatoon",
    ),
    "the United States": (
        "Chicago",
        "Houston",
        "Boston",
        "Seattle",
        "Denver",
        "Miami",
        "San Francisco",
        "Los Angeles",
        "New Orleans",
        "Philadelphia",
        "Atlanta",
        "Detroit",
        "Las Vegas",
        "Phoenix",
    ),
    "Mexico": ("Guadalajara", "Monterrey", "Puebla", "Cancun", "Tijuana", "Oaxaca", "Acapulco"),
    "Cuba": ("Havana", "Santiago de Cuba", "Camaguey", "Holguin", "Cienfuegos"),
    "Brazil": (
        "Rio de Janeiro",
        "Sao Paulo",
        "Salvador",
        "Brasilia",
        "Recife",
        "Manaus",
        "Fortaleza",
        "Porto Alegre",
        "Curitiba",
        "Belo Horizonte",
    ),
    "Argentina": ("Buenos Aires", "Rosario", "Mendoza", "La Plata", "Mar del Plata"),
    "Chile": ("Valparaiso", "Antofagasta", "Punta Arenas", "Vina del Mar", "Temuco"),
    "Peru": ("Lima", "Cusco", "Arequipa", "Iquitos", "Chiclayo"),
    "Colombia": ("Bogota", "Medellin", "Cali", "Barranquilla", "Bucaramanga"),
    "Venezuela": ("Caracas", "Maracaibo", "Barquisimeto", "Maracay", "Maturin"),
    "Ecuador": ("Quito", "Guayaquil", "Ambato", "Machala", "Portoviejo"),
    "Bolivia": ("Santa Cruz de la Sierra", "Cochabamba", "Sucre", "Oruro", "Tarija"),
}
# Well-known places of the same name in another listed country; never named in a false statement, so
# that none of them is accidentally true. (Names shared by two large cities, such as Cordoba, Valencia,
# Hyderabad or Perth, are left out of the list above altogether.)
NAMESAKES: dict[str, tuple[str, ...]] = {
    "Amsterdam": ("the United States",),
    "Athens": ("the United States",),
    "Bergen": ("the Netherlands",),
    "Boston": ("the United Kingdom",),
    "Brighton": ("Australia", "the United States"),
    "Bristol": ("the United States",),
    "Cairo": ("the United States",),
    "Christchurch": ("the United Kingdom",),
    "Dublin": ("the United States",),
    "Dunedin": ("the United States",),
    "Edmonton": ("the United Kingdom",),
    "Florence": ("the United States",),
    "Geneva": ("the United States",),
    "Gold Coast": ("Ghana",),
    "Guadalajara": ("Spain",),
    "Hamburg": ("the United States",),
    "Hanover": ("the United States",),
    "Kochi": ("Japan",),
    "Lagos": ("Portugal",),
    "Lima": ("the United States",),
    "Liverpool": ("Australia",),
    "Los Angeles": ("Chile",),
    "Manchester": ("the United States",),
    "Medina": ("the United States",),
    "Melbourne": ("the United States",),
    "Moscow": ("the United States",),
    "Naples": ("the United States",),
    "Ottawa": ("the United States",),
    "Pamplona": ("Colombia",),
    "Rotterdam": ("the United States",),
    "Saint Petersburg": ("the United States",),
    "Salamanca": ("Mexico",),
    "San Francisco": ("Argentina",),
    "San Sebastian": ("Argentina", "Mexico", "Chile"),
    "Southampton": ("the United States",),
    "Sydney": ("Canada",),
    "Vancouver": ("the United States",),
    "Venice": ("the United States",),
    "Vienna": ("the United States",),
    "Warsaw": ("the United States",),
    "Waterford": ("the United States",),
    "Wellington": ("South Africa", "the United Kingdom", "the United States"),
}
CITY_TEMPLATES = (
    "The city of {city} is in {country}.",
    "{city} is a city in {country}.",
    "{city} is located in {country}.",
    "{city} lies in {country}.",
)
MIN_CITIES = 5  # drawn per country, so that each country named occurs in at least 5 groups
COUNTRY_OF: dict[str, str] = {city: country for country, cities in COUNTRY_CITIES.items() for city in cities}


def _fits(city: str, country: str) -> bool:
    """Whether a false statement may place ``city`` in ``country``: not its own, and no namesake there."""
    return country != COUNTRY_OF[city] and country not in NAMESAKES.get(city, ())


def _swappable(first: str, second: str) -> bool:
    """Whether each city may be placed in the other's country."""
    return _fits(first, COUNTRY_OF[second]) and _fits(second, COUNTRY_OF[first])


def _draw_cities(rng: random.Random) -> list[str]:
    """HALF cities: MIN_CITIES of every country, the rest drawn from all the others."""
    drawn, rest = [], []
    for cities in COUNTRY_CITIES.values():
        picked = rng.sample(cities, MIN_CITIES)
        drawn += picked
        rest += [city for city in cities if city not in picked]
    return drawn + rng.sample(rest, HALF - len(drawn))


def _pair_cities(cities: list[str], rng: random.Random) -> list[tuple[str, str]]:
    """Random pairs of cities that may swap countries; a pair that may not is repaired by a swap of partners
    that leaves both pairs valid (earlier pairs stay valid, so one pass suffices)."""
    rng.shuffle(cities)
    firsts, seconds = cities[::2], cities[1::2]
    n = len(firsts)
    for i in range(n):
        if not _swappable(firsts[i], seconds[i]):
            j = next(
                j
                for j in rng.sample(range(n), n)
                if _swappable(firsts[i], seconds[j]) and _swappable(firsts[j], seconds[i])
            )
            seconds[i], seconds[j] = seconds[j], seconds[i]
    return list(zip(firsts, seconds))


def _deal_templates(pairs: list[tuple[str, str]], rng: random.Random) -> list[str]:
    """Each phrasing for a quarter of the pairs, at random; "The city of X" never meets a name ending in
    "City" (not "The city of Quebec City"): such a pair swaps phrasings with another pair."""
    templates = [CITY_TEMPLATES[i % len(CITY_TEMPLATES)] for i in range(len(pairs))]
    rng.shuffle(templates)

    def clash(template: str, pair: tuple[str, str]) -> bool:
        return template == CITY_TEMPLATES[0] and any(city.endswith(" City") for city in pair)

    for i, pair in enumerate(pairs):
        if clash(templates[i], pair):
            j = next(
                j for j in range(len(pairs)) if not clash(templates[i], pairs[j]) and not clash(templates[j], pair)
            )
            templates[i], templates[j] = templates[j], templates[i]
    return templates


def generate(seed: int) -> pd.DataFrame:
    """400 cities in 200 groups of two cities X (in country A) and Y (in B) from different countries, four
    rows each, in one phrasing: X in A (1), X in B (0), Y in B (1), Y in A (0).

    So every city, every country named and every phrasing occurs once with each label within every group,
    and every word and word pair of the texts as often in a true as in a false row of the group. Held-out
    groups therefore leave the training rows balanced too, and no probe can learn a label from a city, a
    country or a phrasing alone; only from whether the city lies in the country. (Minimal pairs of one
    city alone, X in A beside X in B, balance the countries only across the whole file: a held-out pair
    then leaves its true country in the minority among the training rows, and a bag of words scores 0.29.)
    """
    rng = random.Random(seed)
    pairs = _pair_cities(_draw_cities(rng), rng)
    rows = []
    for (x, y), template in zip(pairs, _deal_templates(pairs, rng)):
        group = "|".join(sorted((x, y)))
        for city, other in ((x, y), (y, x)):
            for country, label in ((COUNTRY_OF[city], 1), (COUNTRY_OF[other], 0)):
                rows.append((template.format(city=city, country=country), label, group, country, city, template))
    return _frame(rows, ["text", "label", "group", "country", "city", "template"], rng)
